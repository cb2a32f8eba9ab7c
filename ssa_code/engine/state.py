"""Reusable SSA state of a prefilled repository, saved between runs.

After the repository has been prefilled (and before any question is appended), the SSA cache
is saved so that the next question on the same content skips the prefill. A state lives in
its own folder under the user's cache directory (``platformdirs.user_cache_dir("ssa-code")``,
overridden by ``SSA_CODE_CACHE_DIR``)::

    states/<key>/meta.json         format version, the key's fields, token count, checksum
    states/<key>/cache.safetensors written by SSACache.save

The key is a digest of everything that changes the prefilled state: the repository content
(git tree id), the packing options, the model (id, revision, file fingerprint, dtype), the SSA
configuration, the prompt prefix and the pinned anchors, and the exact prefilled token ids.

A state is written into a temporary folder beside its final place and renamed into place, so
an interrupted run (Ctrl-C, crash, full disk) never leaves a partial state where a later run
would find it. A state that fails to load (bad metadata, wrong size or checksum, a file the
cache cannot read) is reported with a one-line warning, deleted and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

FORMAT_VERSION = 1
ENV_CACHE_DIR = "SSA_CODE_CACHE_DIR"
ENV_MAX_STATES = "SSA_CODE_MAX_STATES"
DEFAULT_MAX_STATES = 4
CACHE_FILE = "cache.safetensors"
META_FILE = "meta.json"
# Checksum the state file only up to this size: hashing tens of GB would cost more than it saves.
CHECKSUM_LIMIT = 1 << 30


def cache_root() -> Path:
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("ssa-code"))


def states_dir() -> Path:
    return cache_root() / "states"


def tokens_digest(token_ids: Sequence[int]) -> str:
    """Digest of a token sequence (int64 little-endian bytes)."""
    buf = array("q", token_ids)
    if sys.byteorder == "big":
        buf.byteswap()
    return hashlib.sha256(buf.tobytes()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    """A JSON-able view of configs: dataclasses, tuples, paths, dtypes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass(frozen=True)
class StateKey:
    """What a saved state depends on; ``digest`` names its folder."""

    tree_id: str
    pack_options: dict[str, Any]
    model: dict[str, str]
    ssa_config: dict[str, Any]
    prompt: str
    tokens: str

    @classmethod
    def build(
        cls,
        *,
        tree_id: str,
        pack_options: Any,
        model_identity: dict[str, str],
        ssa_config: Any,
        prompt_prefix_ids: Sequence[int],
        anchors: Sequence[tuple[int, int]],
        token_ids: Sequence[int],
    ) -> "StateKey":
        prompt = tokens_digest(list(prompt_prefix_ids)) + ":" + tokens_digest([x for span in anchors for x in span])
        return cls(
            tree_id=str(tree_id),
            pack_options=_plain(pack_options),
            model=dict(sorted(model_identity.items())),
            ssa_config=_plain(ssa_config),
            prompt=prompt,
            tokens=tokens_digest(token_ids),
        )

    def fields(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @property
    def digest(self) -> str:
        blob = json.dumps(self.fields(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:40]


class StateCorrupted(Exception):
    """A saved state exists but cannot be used; the message says why in one line."""


def _file_checksum(path: Path) -> str | None:
    if path.stat().st_size > CHECKSUM_LIMIT:
        return None
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class StateStore:
    """Saved SSA states under ``root`` (default :func:`states_dir`)."""

    def __init__(self, root: Path | None = None, max_states: int | None = None) -> None:
        self.root = Path(root) if root is not None else states_dir()
        if max_states is None:
            env = os.environ.get(ENV_MAX_STATES)
            max_states = int(env) if env and env.isdigit() else DEFAULT_MAX_STATES
        self.max_states = max(1, max_states)

    def path(self, key: StateKey) -> Path:
        return self.root / key.digest

    def exists(self, key: StateKey) -> bool:
        return (self.path(key) / META_FILE).is_file()

    def load(self, key: StateKey, loader: Callable[[Path], Any], expected_tokens: int) -> Any:
        """Load the state for ``key`` with ``loader(cache_file)``; ``None`` when there is none.

        Raises :class:`StateCorrupted` (after deleting the state) when it exists but is unusable.
        ``loader`` returns the cache; its ``get_seq_length()`` must equal ``expected_tokens``.
        """
        folder = self.path(key)
        meta_path = folder / META_FILE
        if not folder.exists():
            return None
        try:
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StateCorrupted(f"unreadable {META_FILE}: {type(exc).__name__}") from None
            if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
                raise StateCorrupted(f"format version {meta.get('format_version') if isinstance(meta, dict) else '?'}, expected {FORMAT_VERSION}")
            if meta.get("key") != key.fields():
                raise StateCorrupted("its metadata does not match its key")
            cache_file = folder / CACHE_FILE
            if not cache_file.is_file():
                raise StateCorrupted(f"{CACHE_FILE} is missing")
            if cache_file.stat().st_size != meta.get("size"):
                raise StateCorrupted(f"{CACHE_FILE} has {cache_file.stat().st_size} bytes, expected {meta.get('size')}")
            if meta.get("checksum") is not None and _file_checksum(cache_file) != meta["checksum"]:
                raise StateCorrupted(f"{CACHE_FILE} fails its checksum")
            try:
                cache = loader(cache_file)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - any load failure means the file is unusable
                raise StateCorrupted(f"cannot load {CACHE_FILE}: {_one_line(exc)}") from None
            n = cache.get_seq_length()
            if int(n) != expected_tokens or meta.get("tokens") != expected_tokens:
                raise StateCorrupted(f"it holds {int(n)} tokens, expected {expected_tokens}")
        except StateCorrupted:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # Least recently used is pruned first: mark this one as used.
        os.utime(meta_path)
        return cache

    def save(self, key: StateKey, cache: Any, tokens: int, extra: dict[str, Any] | None = None,
             size_hint: int | None = None) -> Path:
        """Write ``cache`` for ``key`` atomically: a temporary folder renamed into place.

        ``size_hint``: bytes the state will take; when the disk has less free space (plus a
        1 GiB margin) nothing is written and ``OSError`` says so, rather than filling the disk.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if size_hint is not None:
            free = shutil.disk_usage(self.root).free
            if size_hint + (1 << 30) > free:
                raise OSError(
                    f"the state needs {size_hint / 2**30:.1f} GiB and {self.root} has {free / 2**30:.1f} GiB free"
                )
        final = self.path(key)
        tmp = self.root / f".tmp-{key.digest[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            cache_file = tmp / CACHE_FILE
            cache.save(cache_file)
            meta = {
                "format_version": FORMAT_VERSION,
                "key": key.fields(),
                "tokens": int(tokens),
                "size": cache_file.stat().st_size,
                "checksum": _file_checksum(cache_file),
                "created": time.time(),
                **(extra or {}),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
            for p in (cache_file, tmp / META_FILE):
                with p.open("rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.prune(keep=final)
        return final

    def prune(self, keep: Path | None = None) -> None:
        """Delete the least recently used states beyond ``max_states``, and stale temporaries."""
        if not self.root.is_dir():
            return
        now = time.time()
        states = []
        for p in self.root.iterdir():
            if p.name.startswith(".tmp-"):
                # A temporary folder older than a day belongs to a run that was killed.
                try:
                    if now - p.stat().st_mtime > 86400:
                        shutil.rmtree(p, ignore_errors=True)
                except OSError:
                    pass
                continue
            meta = p / META_FILE
            try:
                states.append((meta.stat().st_mtime, p))
            except OSError:
                if p != keep:
                    shutil.rmtree(p, ignore_errors=True)
        states.sort(reverse=True)
        for _, p in states[self.max_states :]:
            if p != keep:
                shutil.rmtree(p, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]
