"""The documentation runs: every ```python block of README.md, docs/*.md and the example plugins'
READMEs, the blocks of a page in order in one namespace, in a fresh working folder.

A block that needs an optional package says so in an HTML comment on the line before it,
``<!-- requires: torch -->`` (several: ``<!-- requires: torch, matplotlib -->``); it runs, after
the page's other blocks before it, as its own test, skipped where a package is absent. Such a
block must not be needed by the blocks after it. Every ``gatekit ...`` command line of a
```console block must parse with the CLI's own parser, every link to a file of the repository
must point at one that exists (and at a heading it has), and every dotted ``gatekit.`` name in
backquotes must exist and be public.
"""
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

import gatekit
from gatekit import cli
from gatekit.core import plugins

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "plugins").glob("*/README.md"))]
# The README is the five-minute read; the rest belongs in docs/.
README_MAX_BYTES = 8000

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*(\w[\w ]*?)\s*:\s*(.*?)\s*-->\s*\n\s*\Z")
# Modules that a Cython gate cimports: underscored, but the documented interface.
PUBLIC_UNDERSCORED = {"gatekit.core._gate"}
# The frameworks gatekit's integrations import (gatekit.torch, gatekit.jax), optional.
OPTIONAL_FRAMEWORKS = {"torch", "jax"}


class Block:
    def __init__(self, page, language, code, line, requires):
        self.page, self.language, self.code = page, language, code
        self.line, self.requires = line, requires

    def run(self, namespace):
        # Blank lines put the block at its own line of the page in a traceback.
        source = "\n" * self.line + self.code
        exec(compile(source, str(self.page), "exec"), namespace)


def blocks(page, language=None):
    """The fenced blocks of ``page`` (of one ``language`` if given), each with the packages its
    ``requires`` marker names."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()]
        marker = MARKER.search(before)
        requires = ()
        if marker is not None:
            kind, value = marker.groups()
            if kind != "requires":
                raise AssertionError(f"{page.name}: unknown marker {kind!r} before the block at "
                                     f"line {before.count(chr(10)) + 1}; the only one is "
                                     "<!-- requires: package, ... -->")
            requires = tuple(name.strip() for name in value.split(",") if name.strip())
        line = before.count("\n") + 1
        block = Block(page, match.group(1), match.group(2), line, requires)
        if language is None or block.language == language:
            found.append(block)
    return found


def _page_id(page):
    return str(page.relative_to(ROOT))


@pytest.fixture
def session(tmp_path, monkeypatch):
    """A fresh namespace, in a fresh working folder; plugins a page registers are removed."""
    monkeypatch.chdir(tmp_path)
    before = {name for name, _ in plugins.plugin_manager().list_name_plugin()}
    yield {"__name__": "__docs__"}
    for name, _ in plugins.plugin_manager().list_name_plugin():
        if name not in before:
            gatekit.unregister_plugin(name)


def _missing(block):
    return [name for name in block.requires if importlib.util.find_spec(name) is None]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_page_runs(page, session):
    """Every block of the page that needs no optional package, in order."""
    for block in blocks(page, "python"):
        if not block.requires:
            block.run(session)


OPTIONAL = [(page, k) for page in PAGES for k, block in enumerate(blocks(page, "python"))
            if block.requires]


@pytest.mark.parametrize("page, index", OPTIONAL,
                         ids=[f"{_page_id(page)}:{blocks(page, 'python')[k].line}"
                              for page, k in OPTIONAL])
def test_optional_block_runs(page, index, session):
    """A block that needs an optional package, after the page's plain blocks before it."""
    page_blocks = blocks(page, "python")
    block = page_blocks[index]
    for name in block.requires:
        pytest.importorskip(name)
    for earlier in page_blocks[:index]:
        if not earlier.requires:
            earlier.run(session)
    block.run(session)


def test_readme_has_examples():
    assert blocks(ROOT / "README.md", "python"), "the README has no Python examples"


def _command_lines(block):
    """The ``$ gatekit ...`` lines of a console block, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", block.code)
    return [line[2:] for line in text.splitlines() if line.startswith("$ gatekit ")]


CONSOLE = [(page, command) for page in PAGES for block in blocks(page, "console")
           for command in _command_lines(block)]


@pytest.mark.parametrize("page, command", CONSOLE,
                         ids=[f"{_page_id(p)}:{c[:40]}" for p, c in CONSOLE])
def test_console_commands_parse(page, command, capsys):
    arguments = shlex.split(command)[1:]
    try:
        parsed = cli.build_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{page.name}: `{command}` does not parse: {capsys.readouterr().err}")
    assert parsed.command == arguments[0]


def _slug(heading):
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page):
    text = FENCE.sub("", page.read_text())
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_links_point_at_files_and_headings(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue                                    # a web address
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), \
                f"{page.name} links to {target}: {linked.name} has no such heading"


NAME = re.compile(r"`[^`\n]*`")
DOTTED = re.compile(r"\bgatekit(?:\.[A-Za-z_]\w*)+")


def _resolves(name):
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            target = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                target = getattr(target, attribute)
        except AttributeError:
            return False
        except ImportError as error:
            # gatekit.torch without torch, gatekit.jax without JAX: checked where it is installed.
            if error.name in OPTIONAL_FRAMEWORKS:
                return True
            raise
        return True
    return False


# Reports of benchmark runs name the modules of the commit they ran.
NAMED_PAGES = [page for page in PAGES if not page.name.startswith("benchmarks")]


@pytest.mark.parametrize("page", NAMED_PAGES, ids=_page_id)
def test_named_objects_exist_and_are_public(page):
    text = page.read_text()
    spans = NAME.findall(FENCE.sub("", text))
    spans += [block.code for block in blocks(page, "python")]
    names = {name for span in spans for name in DOTTED.findall(span)}
    for name in sorted(names):
        assert _resolves(name), f"{page.name} names {name}, which does not exist"
        private = [part for part in name.split(".") if part.startswith("_")]
        assert not private or name in PUBLIC_UNDERSCORED, \
            f"{page.name} documents {name}, which is private"


def _table(page, header):
    """The rows of the table of ``page`` whose header row starts with ``header``, as lists of
    cells; an empty first cell takes the one of the row above."""
    lines = page.read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not cells[0] and rows:
            cells[0] = rows[-1][0]
        rows.append(cells)
    return rows


def _names(cell):
    """The names in backquotes of a table cell."""
    return tuple(re.findall(r"`([^`]+)`", cell))


def _builtin(entries):
    return {name: entry for name, entry in entries.items()
            if entry.plugin in plugins.DEFAULT_PLUGINS}


def test_tables_of_gates_match_the_built_in_gates():
    registry = plugins.registry()
    builtin = {(role, name): (tuple(entry.cls.blocks), tuple(entry.cls.params))
               for role, entries in registry.gates.items()
               for name, entry in _builtin(entries).items()}
    rows = _table(ROOT / "docs" / "cells-and-gates.md", "| role | gate | computes |")
    documented = {(role, _names(gate)[0]): (_names(blocks), _names(params))
                  for role, gate, _, blocks, params in rows}
    assert documented == builtin
    rows = _table(ROOT / "README.md", "| role | computes |")
    listed = {(role, name) for role, _, _, others in rows
              for name in ("standard", *_names(others))}
    assert listed == set(builtin)


def test_tables_of_variants_match_the_built_in_variants():
    variants = {name: entry.gates for name, entry in _builtin(plugins.registry().variants).items()}
    rows = _table(ROOT / "docs" / "cells-and-gates.md", "| variant | forget | learn | use |")
    documented = {}
    for name, forget, learn, use, _ in rows:
        gates = {role: (_names(cell) or ("standard",))[0]
                 for role, cell in zip(("forget", "learn", "use"), (forget, learn, use))}
        documented[_names(name)[0]] = {**gates, "remember": "standard"}
    assert documented == variants
    rows = _table(ROOT / "README.md", "| variant |")
    assert {name for row in rows for name in _names(row[0])} == set(variants)


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, (f"README.md is {size} bytes; keep it a five-minute read "
                                      "and move the rest into docs/")
