"""Dependency order (cycles grouped, stable) and question relevance (personalised PageRank)."""

from __future__ import annotations

import pytest

from ssa_code.context import PackOptions
from ssa_code.context.graph import ParsedFile, RepoGraph
from ssa_code.context.order import dependency_order, order_files, pagerank, question_seeds, strongly_connected
from ssa_code.context.pack import map_repository
from ssa_code.context.parse import FileSymbols


def test_dependencies_come_first_and_ties_sort_by_path():
    deps = {"app": ["lib", "util"], "lib": ["util"], "util": [], "a_script": ["app"], "z": []}
    order = dependency_order(sorted(deps), deps)
    assert order == ["util", "lib", "app", "a_script", "z"]


def test_cycles_are_grouped_and_ordered_stably():
    deps = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"], "e": [], "c2": ["c"]}
    order = dependency_order(sorted(deps), deps)
    assert order[:3] == ["a", "b", "c"]  # the cycle, members by path, before its users
    assert order.index("d") > 2 and order.index("c2") > 2
    assert order == dependency_order(list(reversed(sorted(deps))), deps)  # input order does not matter
    comps = strongly_connected(sorted(deps), deps)
    assert ["a", "b", "c"] in comps


def test_deep_chain_has_no_recursion_limit():
    n = 5000
    deps = {f"f{i:05d}": [f"f{i + 1:05d}"] if i + 1 < n else [] for i in range(n)}
    order = dependency_order(sorted(deps), deps)
    assert order[0] == f"f{n - 1:05d}" and order[-1] == "f00000"


def test_pagerank_flows_to_what_is_used_and_personalisation_moves_it():
    nodes = ["a", "b", "c", "d"]
    weights = {("a", "c"): 1.0, ("b", "c"): 1.0, ("d", "a"): 1.0}
    plain = pagerank(nodes, weights)
    assert abs(sum(plain.values()) - 1) < 1e-9
    assert max(plain, key=plain.get) == "c"
    personal = pagerank(nodes, weights, {"d": 1.0})
    assert personal["d"] > plain["d"] and personal["b"] == 0.0


def _graph(files):
    return RepoGraph([ParsedFile(p, lang, FileSymbols(defs=d, refs=r, imports=i)) for p, lang, d, r, i in files])


def test_reference_edges_order_languages_without_file_imports():
    g = _graph([
        ("b/Use.java", "java", [("Use", "class", 1, 5)], [("Helper", "type", 2)], []),
        ("a/Helper.java", "java", [("Helper", "class", 1, 3)], [], []),
        ("c/other.py", "python", [("Helper", "class", 1, 2)], [], []),
    ])
    assert g.deps["b/Use.java"] == ["a/Helper.java"]  # same family only, never the Python file
    order = order_files(g).order
    assert order.index("a/Helper.java") < order.index("b/Use.java")


def test_question_seeds_by_path_name_and_definition():
    g = _graph([
        ("src/parser.py", "python", [("parse_config", "function", 1, 9)], [], []),
        ("src/cli.py", "python", [("main", "function", 1, 3)], [("parse_config", "call", 2)], ["src.parser"]),
        ("docs/guide.md", "markdown", [], [], []),
    ])
    assert set(question_seeds("where is parse_config used?", g)) == {"src/parser.py"}
    assert set(question_seeds("what does src/cli.py do", g)) == {"src/cli.py"}
    assert set(question_seeds("explain the parser", g)) == {"src/parser.py"}
    assert set(question_seeds("how do we parse the config", g)) == {"src/parser.py"}
    assert question_seeds("what is the weather like", g) == {}
    o = order_files(g, "where is parse_config used?")
    assert o.order[-1] == "src/parser.py"
    assert "docs/guide.md" not in o.focus  # unconnected files never join the focus


def test_sample_repo_dependency_order(sample_repo):
    _walk, graph = map_repository(sample_repo, PackOptions())
    order = order_files(graph).order
    before = [
        ("inventory/money.py", "inventory/core.py"), ("inventory/core.py", "inventory/report.py"),
        ("inventory/report.py", "inventory/cli.py"), ("native/vec.h", "native/vec.c"),
        ("rust/src/point.rs", "rust/src/lib.rs"), ("go/shapes/shapes.go", "go/main.go"),
        ("web/format.js", "web/table.js"), ("web/http.ts", "web/api.ts"),
    ]
    for dep, user in before:
        assert order.index(dep) < order.index(user), (dep, user, order)


@pytest.mark.parametrize("question", [None, "How is the stock total computed?"])
def test_order_is_deterministic(sample_repo, question):
    _walk, graph = map_repository(sample_repo, PackOptions())
    first = order_files(graph, question)
    for _ in range(3):
        again = order_files(map_repository(sample_repo, PackOptions())[1], question)
        assert again.order == first.order and again.relevance == first.relevance


@pytest.mark.parametrize(("language", "importer", "spec", "expected"), [
    ("python", "pkg/sub/mod.py", "..util", ["pkg/util.py"]),
    ("python", "pkg/sub/mod.py", ".", ["pkg/sub/__init__.py"]),
    ("python", "tests/test_x.py", "pkg.util", ["pkg/util.py"]),
    ("javascript", "web/a.js", "./lib", ["web/lib/index.js"]),
    ("typescript", "web/b.ts", "./c.js", ["web/c.ts"]),
    ("javascript", "web/a.js", "react", []),
    ("c", "src/main.c", "util.h", ["include/util.h"]),
    ("go", "cmd/main.go", "example.com/proj/internal/store", ["internal/store/a.go", "internal/store/b.go"]),
    ("rust", "src/lib.rs", "net", ["src/net/mod.rs"]),
    ("rust", "src/main.rs", "crate::net::Client", ["src/net/mod.rs"]),
    ("java", "src/App.java", "com.acme.Util", ["src/com/acme/Util.java"]),
    ("kotlin", "src/App.kt", "com.acme.Tools", ["src/com/acme/Tools.kt"]),
    ("ruby", "lib/app.rb", "helpers", ["lib/helpers.rb"]),
    ("php", "src/App.php", "App\\Models\\User", ["src/Models/User.php"]),
    ("csharp", "A.cs", "System.Text", []),
])
def test_resolve_import(language, importer, spec, expected):
    from ssa_code.context.graph import _PathIndex, resolve_import

    paths = ["pkg/util.py", "pkg/sub/__init__.py", "pkg/sub/mod.py", "tests/test_x.py", "web/a.js",
             "web/lib/index.js", "web/b.ts", "web/c.ts", "src/main.c", "include/util.h", "cmd/main.go",
             "internal/store/a.go", "internal/store/b.go", "src/lib.rs", "src/main.rs", "src/net/mod.rs",
             "src/App.java", "src/com/acme/Util.java", "src/App.kt", "src/com/acme/Tools.kt", "lib/app.rb",
             "lib/helpers.rb", "src/App.php", "src/Models/User.php", "A.cs"]
    assert resolve_import(language, importer, spec, _PathIndex(paths)) == expected
