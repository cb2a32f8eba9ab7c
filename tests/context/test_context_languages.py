"""One small fixture file per parsed language: definitions, references and imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssa_code.context.languages import PARSED, detect_language, parser_and_query
from ssa_code.context.parse import parse_source

FIXTURES = Path(__file__).parent / "fixtures"

# file -> (language, definitions (name, kind), references, imports); each a subset that must hold.
CASES = {
    "sample.py": ("python", {("Greeter", "class"), ("greet", "function"), ("main", "function"), ("LIMIT", "constant")},
                  {"Base", "slug", "Greeter", "upper"}, {"os.path", ".helpers", ".helpers.slugify"}),
    "sample.js": ("javascript", {("Greeter", "class"), ("greet", "method"), ("main", "function"), ("shout", "function")},
                  {"Base", "pad", "Greeter"}, {"./pad.js", "fs"}),
    "sample.ts": ("typescript", {("Shape", "interface"), ("Square", "class"), ("compute", "function"),
                                 ("Id", "type"), ("Color", "enum"), ("area", "method")},
                  {"Shape", "compute"}, {"./row"}),
    "sample.tsx": ("tsx", {("Props", "interface"), ("Toolbar", "function")}, {"Props", "track"}, {"./button"}),
    "sample.go": ("go", {("Circle", "type"), ("Area", "method"), ("Describe", "function")},
                  {"Pi", "Sprintf", "Circle"}, {"fmt", "example.com/sample/geo"}),
    "sample.rs": ("rust", {("Shape", "interface"), ("Circle", "class"), ("square", "function"), ("point", "module")},
                  {"square", "Shape", "Circle", "println"}, {"point", "crate::point::Point"}),
    "Sample.java": ("java", {("Greeter", "class"), ("Named", "interface"), ("greet", "method")},
                    {"Base", "upper", "Named"}, {"com.example.util.Strings"}),
    "sample.c": ("c", {("dot", "function"), ("main", "function"), ("point", "class"), ("point_t", "type"),
                       ("SQUARE", "macro")},
                 {"dot", "printf", "point_t"}, {"stdio.h", "vec.h"}),
    "sample.cpp": ("cpp", {("Circle", "class"), ("area", "method"), ("geo", "module"), ("main", "function")},
                   {"Shape", "compute_area", "area"}, {"vector", "shape.hpp"}),
    "sample.cs": ("csharp", {("IShape", "interface"), ("Circle", "class"), ("Area", "method"), ("Radius", "property")},
                  {"IShape", "Square"}, {"System", "Example.Util"}),
    "sample.rb": ("ruby", {("Shop", "module"), ("Cart", "class"), ("total", "method"), ("empty", "method")},
                  {"Base", "price_of", "Cart"}, {"helpers", "json"}),
    "sample.php": ("php", {("HasName", "interface"), ("User", "class"), ("name", "method"), ("make_user", "function")},
                   {"Model", "HasName", "format_name", "User"}, {"App\\Support\\Str", "helpers.php"}),
    "sample.kt": ("kotlin", {("Greeter", "class"), ("Registry", "class"), ("greet", "function"), ("main", "function")},
                  {"format", "println", "Greeter", "Named"}, {"com.example.util.Strings"}),
    "sample.swift": ("swift", {("Shape", "interface"), ("Circle", "class"), ("square", "function"), ("area", "function")},
                     {"square", "Shape", "print"}, {"Foundation"}),
}


def test_every_parsed_language_has_a_fixture_and_a_query():
    assert {lang for lang, *_ in CASES.values()} == set(PARSED)
    assert len(PARSED) >= 12
    for lang in PARSED:
        parser_and_query(lang)  # the .scm file compiles against the bundled grammar


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_symbols(name):
    language, defs, refs, imports = CASES[name]
    path = FIXTURES / name
    assert detect_language(name) == language
    symbols = parse_source(path.read_text("utf-8"), language)
    assert symbols.error == ""
    got_defs = {(d[0], d[1]) for d in symbols.defs}
    assert defs <= got_defs, f"missing definitions {defs - got_defs}; got {sorted(got_defs)}"
    got_refs = {r[0] for r in symbols.refs}
    assert refs <= got_refs, f"missing references {refs - got_refs}; got {sorted(got_refs)}"
    assert imports <= set(symbols.imports), f"imports {symbols.imports}"


def test_definition_lines_are_one_based_and_span_the_body():
    text = (FIXTURES / "sample.py").read_text("utf-8")
    symbols = parse_source(text, "python")
    greeter = next(d for d in symbols.defs if d[0] == "Greeter")
    assert greeter[2] == 7  # "class Greeter(Base):" is line 7
    assert greeter[3] == 9  # its last line
    assert text.splitlines()[greeter[2] - 1].startswith("class Greeter")


def test_syntax_errors_are_reported_not_raised():
    symbols = parse_source("def broken(:\n    return )\nclass Ok:\n    pass\n", "python")
    assert symbols.error
    assert ("Ok", "class") in {(d[0], d[1]) for d in symbols.defs}


def test_unparsed_language_is_rejected():
    with pytest.raises(ValueError, match="markdown"):
        parse_source("# title\n", "markdown")


@pytest.mark.parametrize(("path", "head", "language"), [
    ("a/b.md", "", "markdown"), ("x.yml", "", "yaml"), ("Makefile", "", "make"), ("run", "#!/usr/bin/env python3\n", "python"),
    ("tool", "#!/bin/bash\n", "shell"), ("notes", "plain", "text"), ("X.H", "", "c"), ("a.hpp", "", "cpp"),
])
def test_detect_language(path, head, language):
    assert detect_language(path, head) == language
