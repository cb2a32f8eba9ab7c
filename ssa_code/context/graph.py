"""The definition/reference graph of a repository.

Nodes are files.  Two kinds of edge, both pointing from a file to a file it uses:

* import edges: an import resolved to a repository file (Python modules, JS/TS relative
  specifiers, C/C++ includes, Go package directories, Rust ``mod``/``use`` paths, Java and
  Kotlin class paths, PHP namespaces, Ruby ``require``);
* reference edges: a reference to a name that another file of the same language family
  defines (the approach of aider's repo map), weighted by how often and how uniquely.

:class:`RepoGraph` also answers symbol questions for ``explain``: where a name is defined,
who refers to it, and what a definition refers to.
"""

from __future__ import annotations

import math
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional

from ssa_code.context.languages import family
from ssa_code.context.parse import FileSymbols

# Languages whose imports name files precisely enough to order by imports alone; other
# languages (Go packages, Java/C# namespaces, Rust modules, Ruby, PHP, Swift, Kotlin)
# also get reference edges, because a file there uses names without importing their file.
IMPORT_ORDERED = frozenset({"python", "javascript", "typescript", "tsx", "c", "cpp"})
# A name defined in more files than this is too ambiguous to order by (``get``, ``run``).
MAX_DEFINERS_FOR_ORDER = 3


@dataclass(frozen=True)
class Definition:
    """A definition site. ``line``/``end_line`` are 1-based and inclusive."""

    path: str
    line: int
    kind: str
    name: str
    end_line: int = 0


@dataclass(frozen=True)
class Reference:
    """A reference site; ``enclosing`` is the innermost definition around it, if any."""

    path: str
    line: int
    kind: str
    name: str
    enclosing: Optional[str] = None


@dataclass(frozen=True)
class ParsedFile:
    """A file's path, language and symbols (empty for unparsed languages)."""

    path: str
    language: str
    symbols: FileSymbols


class _PathIndex:
    """Looks up repository files by path suffix (``a/b.py`` finds ``src/a/b.py``)."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = set(paths)
        self.by_suffix: dict[str, list[str]] = defaultdict(list)
        self.dirs: dict[str, list[str]] = defaultdict(list)
        for p in sorted(self.paths):
            parts = p.split("/")
            for i in range(len(parts)):
                self.by_suffix["/".join(parts[i:])].append(p)
            self.dirs[posixpath.dirname(p)].append(p)

    def best(self, importer: str, suffixes: Iterable[str]) -> Optional[str]:
        """The file matching the first suffix that matches, nearest to the importer."""
        for s in suffixes:
            s = posixpath.normpath(s)
            if s.startswith("../") or s == "..":
                continue
            hits = self.by_suffix.get(s.lstrip("./") if s != "." else s)
            if hits:
                return min(hits, key=lambda h: (-_common_prefix(h, importer), len(h), h))
        return None

    def exact(self, candidates: Iterable[str]) -> Optional[str]:
        for c in candidates:
            c = posixpath.normpath(c)
            if c in self.paths:
                return c
        return None

    def package_dir(self, import_path: str, ext: str) -> list[str]:
        """Files with extension ``ext`` in the longest repository directory that the import path ends with."""
        best: Optional[str] = None
        for d in self.dirs:
            if d and (import_path == d or import_path.endswith("/" + d)):
                if any(p.endswith(ext) for p in self.dirs[d]) and (best is None or len(d) > len(best)):
                    best = d
        return [p for p in self.dirs[best] if p.endswith(ext)] if best is not None else []


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("/"), b.split("/")):
        if x != y:
            break
        n += 1
    return n


_JS_EXTS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts")


def resolve_import(language: str, importer: str, spec: str, index: _PathIndex) -> list[str]:
    """Repository files that an import string names (possibly none).

    Args:
        language: the importer's language.
        importer: the importing file's path.
        spec: the import string as captured by the query.
        index: all packed file paths.
    """
    here = posixpath.dirname(importer)
    if language == "python":
        dots = len(spec) - len(spec.lstrip("."))
        mod = spec[dots:].replace(".", "/")
        if dots:
            base = here
            for _ in range(dots - 1):
                base = posixpath.dirname(base)
            stem = posixpath.join(base, mod) if mod else base
            hit = index.exact([stem + ".py", posixpath.join(stem, "__init__.py"), stem + ".pyi"])
        else:
            hit = index.best(importer, [mod + ".py", mod + "/__init__.py", mod + ".pyi"])
        return [hit] if hit else []
    if language in ("javascript", "typescript", "tsx"):
        if not spec.startswith("."):
            return []
        stem = posixpath.normpath(posixpath.join(here, spec))
        cands = [stem] + [stem + e for e in _JS_EXTS] + [posixpath.join(stem, "index" + e) for e in _JS_EXTS]
        # "./a.js" in TypeScript sources refers to "./a.ts".
        root, ext = posixpath.splitext(stem)
        if ext in (".js", ".jsx", ".mjs", ".cjs"):
            cands += [root + e for e in (".ts", ".tsx", ".mts", ".cts")]
        hit = index.exact(cands)
        return [hit] if hit else []
    if language in ("c", "cpp"):
        hit = index.exact([posixpath.join(here, spec)]) or index.best(importer, [spec])
        return [hit] if hit else []
    if language == "go":
        return [p for p in index.package_dir(spec, ".go") if p != importer]
    if language == "rust":
        segs = [s for s in spec.replace("{", "::").replace("}", "").split("::") if s.strip()]
        segs = [s.strip().split(" as ")[0] for s in segs]
        if len(segs) == 1 and "::" not in spec:
            stem = posixpath.splitext(importer)[0]
            bases = [here] if posixpath.basename(stem) in ("mod", "lib", "main") else [here, stem]
            hit = index.exact([posixpath.join(b, segs[0] + x) for b in bases for x in (".rs", "/mod.rs")])
            return [hit] if hit else []
        while segs and segs[0] in ("crate", "self", "super", "std", "core", "alloc"):
            segs = segs[1:]
        for k in range(len(segs), 0, -1):
            stem = "/".join(segs[:k])
            hit = index.best(importer, [stem + ".rs", stem + "/mod.rs"])
            if hit:
                return [hit]
        return []
    if language in ("java", "kotlin"):
        path = spec.replace(".", "/")
        hit = index.best(importer, [path + ".java", path + ".kt"])
        if hit:
            return [hit]
        return [p for p in index.package_dir(path, ".java" if language == "java" else ".kt")]
    if language == "php":
        if "\\" in spec:
            segs = [s for s in spec.split("\\") if s]
            for k in range(len(segs) - 1):
                hit = index.best(importer, ["/".join(segs[k:]) + ".php"])
                if hit:
                    return [hit]
            return []
        hit = index.exact([posixpath.join(here, spec)]) or index.best(importer, [spec])
        return [hit] if hit else []
    if language == "ruby":
        name = spec if spec.endswith(".rb") else spec + ".rb"
        hit = index.exact([posixpath.join(here, name)]) or index.best(importer, [name, "lib/" + name])
        return [hit] if hit else []
    return []


class RepoGraph:
    """Definitions, references and file-to-file edges of the packed files.

    Args:
        files: parsed files (unparsed languages have empty symbols).
    Attributes:
        paths: all file paths, sorted.
        deps: ``path -> sorted list of paths it uses`` (for dependency order).
        weights: ``(src, dst) -> weight`` of the ranking graph (src uses dst).
    """

    def __init__(self, files: Iterable[ParsedFile]) -> None:
        self.files: dict[str, ParsedFile] = {f.path: f for f in sorted(files, key=lambda f: f.path)}
        self.paths = sorted(self.files)
        self._defs: dict[str, list[Definition]] = defaultdict(list)
        definers: dict[tuple[str, str], set[str]] = defaultdict(set)
        for f in self.files.values():
            fam = family(f.language)
            for name, kind, line, end in f.symbols.defs:
                self._defs[name].append(Definition(f.path, line, kind, name, end))
                definers[(fam, name)].add(f.path)
        index = _PathIndex(self.paths)
        deps: dict[str, set[str]] = {p: set() for p in self.paths}
        weights: dict[tuple[str, str], float] = defaultdict(float)
        for f in self.files.values():
            for spec in f.symbols.imports:
                for target in resolve_import(f.language, f.path, spec, index):
                    if target != f.path:
                        deps[f.path].add(target)
                        weights[(f.path, target)] += 1.0
            counts: dict[str, int] = defaultdict(int)
            for name, _kind, _line in f.symbols.refs:
                counts[name] += 1
            fam = family(f.language)
            by_ref = f.language not in IMPORT_ORDERED
            for name, n in counts.items():
                targets = definers.get((fam, name))
                if not targets:
                    continue
                others = [t for t in targets if t != f.path]
                if not others:
                    continue
                # As aider: repeated use counts with diminishing weight, ambiguous names less.
                w = math.sqrt(n) / len(targets)
                for t in others:
                    weights[(f.path, t)] += w
                if by_ref and len(targets) <= MAX_DEFINERS_FOR_ORDER:
                    deps[f.path].update(others)
        self.deps: dict[str, list[str]] = {p: sorted(d) for p, d in deps.items()}
        self.weights = dict(sorted(weights.items()))

    # -- questions asked by ``explain`` ------------------------------------------------------

    def definitions(self, name: str) -> list[Definition]:
        """Every definition of ``name``, sorted by (path, line)."""
        return sorted(self._defs.get(name, ()), key=lambda d: (d.path, d.line))

    def defined_names(self) -> list[str]:
        return sorted(self._defs)

    def _enclosing(self, path: str, line: int) -> Optional[str]:
        best: Optional[tuple[int, str]] = None
        for name, _kind, start, end in self.files[path].symbols.defs:
            if start <= line <= end and (best is None or end - start < best[0]):
                best = (end - start, name)
        return best[1] if best else None

    def callers(self, name: str) -> list[Reference]:
        """Every reference to ``name`` (calls, type uses, imports), sorted by (path, line).

        Each carries the innermost enclosing definition's name (``None`` at top level).
        """
        out = []
        for path in self.paths:
            for ref_name, kind, line in self.files[path].symbols.refs:
                if ref_name == name:
                    enclosing = self._enclosing(path, line)
                    # The name at its own definition line is not a caller.
                    if enclosing == name and any(d.path == path and d.line == line for d in self._defs.get(name, ())):
                        continue
                    out.append(Reference(path, line, kind, name, enclosing))
        return out

    def callees(self, path: str, name: str) -> list[Reference]:
        """References inside the definition(s) of ``name`` in ``path``, in source order.

        Returns an empty list when ``path`` does not define ``name``.  Resolve a callee's
        own definitions with :meth:`definitions`.
        """
        f = self.files.get(path)
        if f is None:
            return []
        spans = [(start, end) for n, _k, start, end in f.symbols.defs if n == name]
        out = []
        for ref_name, kind, line in f.symbols.refs:
            if any(s <= line <= e for s, e in spans):
                if ref_name == name and any(s == line for s, _ in spans):
                    continue
                out.append(Reference(path, line, kind, ref_name, name))
        return out

    def top_level(self, path: str) -> list[tuple[str, str, int, int]]:
        """Definitions of ``path`` not nested in another definition, in line order."""
        defs = sorted(self.files[path].symbols.defs, key=lambda d: (d[2], -d[3], d[0], d[1]))
        out = []
        cover_end = 0
        for d in defs:
            # Sorted by start then widest first: a definition starting after the last kept
            # one ends is not nested in it.
            if d[2] > cover_end:
                out.append(d)
                cover_end = d[3]
        return out


__all__ = ["Definition", "Reference", "ParsedFile", "RepoGraph", "resolve_import"]
