"""The docs and the source's docstrings and comments name only what exists.

Checked in every ``*.md`` of the repository (README.md, docs/**) and in the docstrings and
comments of ``src/``:

* files of this repository: paths under ``src/``, ``tests/``, ``benchmarks/``, ``docs/``,
  ``.ci/``; package files (``serve_cleanup/...py``, ``core/x.py``, ``serve_adapter/``, ...);
  relative Markdown links, with their ``#anchor`` when they point into a Markdown file;
* module paths ``serve_cleanup.x.y`` (``serve_cleanup.x:y``): a module, package or
  top-level name in ``src/`` (read with ``ast``, nothing is imported);
* tests: ``test_x.py``, ``tests/.../test_x.py::test_y`` and bare ``test_y`` names (globs
  such as ``test_shutdown_*`` and parameter ids such as ``[0.3]`` allowed);
* ``serve-cleanup`` commands and their options, against the click command tree;
* exit codes ("exit code N", "exits N", and the rows of a table whose first column is
  ``code``), against the CLI's one table of exit codes.

Ray's and KubeRay's own names (``ray ...``, ``serve ...``, ``ray.serve...``, ``kubectl``)
are out of scope. Imports no Ray: the CLI is importable without it.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib
import io
import re
import tokenize
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PKG = SRC / "serve_cleanup"
TESTS = ROOT / "tests"
SUBPACKAGES = ("core", "client", "cli", "serve_adapter")


# --- the CLI's tables: the two lookups to repoint if the CLI moves ----------------------


def cli_group():
    """The ``serve-cleanup`` click group."""
    import click

    cli = importlib.import_module("serve_cleanup.cli")
    for name in ("main", "cli"):
        group = getattr(cli, name, None)
        if isinstance(group, click.Group):
            return group
    raise AssertionError("serve_cleanup.cli has no click group named `main` or `cli`")


def cli_exit_codes() -> set[int]:
    """The CLI's one table of exit codes (the ``Exit`` enum)."""
    cli = importlib.import_module("serve_cleanup.cli")
    table = getattr(cli, "Exit", None)
    if table is None:
        table = importlib.import_module("serve_cleanup.cli.common").Exit
    return {int(code) for code in table}


# --- what is read --------------------------------------------------------------------------


class Text(NamedTuple):
    label: str  # file, and line where it helps
    text: str
    markdown: bool
    base: Path  # relative links start here


def _ignored(path: Path) -> bool:
    parts = path.relative_to(ROOT).parts[:-1]
    return any(p.startswith(".") or p in {"build", "dist", "node_modules", "__pycache__"}
               or p.endswith(".egg-info") for p in parts)


def markdown_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.md") if not _ignored(p))


def source_texts(path: Path) -> Iterator[Text]:
    """The docstrings and comments of one Python file, each with its line."""
    source = path.read_text()
    rel = path.relative_to(ROOT)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield Text(f"{rel}:{tok.start[0]}", tok.string, False, path.parent)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                line = node.body[0].lineno
                yield Text(f"{rel}:{line}", doc, False, path.parent)


def all_texts() -> list[Text]:
    texts = [Text(str(p.relative_to(ROOT)), p.read_text(), True, p.parent) for p in markdown_files()]
    for path in sorted(PKG.rglob("*.py")):
        texts.extend(source_texts(path))
    return texts


# --- Markdown structure ---------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
INLINE = re.compile(r"(`+)(?!`)((?:(?!\n\s*\n).)+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def without_code(text: str) -> str:
    return INLINE.sub(" ", FENCE.sub(" ", text))


def code_pieces(text: str, markdown: bool) -> list[str]:
    """Fenced blocks (Markdown) and inline spans (`x` or ``x``): where commands are written."""
    pieces = [m.group(0) for m in FENCE.finditer(text)] if markdown else []
    rest = FENCE.sub(" ", text) if markdown else text
    pieces += [m.group(2) for m in INLINE.finditer(rest)]
    return pieces


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub(" ", path.read_text())):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return frozenset(out)


# --- files, links and modules ---------------------------------------------------------------

REPO_PATH = re.compile(r"(?<![\w./~-])((?:src|tests|benchmarks|docs|\.ci)/[\w./*<>{}-]*)")
PKG_PATH = re.compile(
    r"(?<![\w./~-])((?:serve_cleanup/)?(?:" + "|".join(SUBPACKAGES) + r")/(?:[\w/]*\w\.py)?"
    r"|serve_cleanup/\w+\.py)(?![\w-])"
)
MODULE = re.compile(r"(?<![\w./-])serve_cleanup((?:\.[A-Za-z_]\w*)+)(?::([A-Za-z_]\w*))?")
FILE_SUFFIXES = {"json", "py", "md", "pth", "whl", "egg", "log", "txt"}
SECTION = re.compile(r'(?<![\w./-])(docs/[\w/.-]+\.md)(?:,\s*|\s*\(\s*)"([^"\n]+)"')


def check_paths(text: str, markdown: bool, base: Path) -> list[str]:
    problems = []
    if markdown:
        for m in LINK.finditer(without_code(text)):
            problems += check_link(m.group(1), base)
        text = re.sub(r"\]\([^)\s]*\)", "]", text)  # link targets: checked as links
    for m in REPO_PATH.finditer(text):
        token = m.group(1).rstrip(".,:;")
        if any(c in token for c in "*<>{}") or token.endswith("..."):
            continue  # a pattern, not a file
        if not (ROOT / token).exists():
            problems.append(f"names {token}, which does not exist")
    for m in PKG_PATH.finditer(text):
        token = m.group(1)
        target = SRC / token if token.startswith("serve_cleanup/") else PKG / token
        if not target.exists():
            problems.append(f"names {token}, which is not in src/serve_cleanup")
    for m in SECTION.finditer(text):  # docs/x.md, "Heading" or docs/x.md ("Heading")
        page = ROOT / m.group(1)
        if page.exists() and slug(m.group(2)) not in anchors(page):
            problems.append(f'names {m.group(1)}, "{m.group(2)}": no such heading there')
    return problems


def check_link(target: str, base: Path) -> list[str]:
    """A relative link: its file exists, and so does its anchor if it points into a page.
    (A link to an anchor in the same page is checked by check_anchors.)"""
    if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith(("/", "#")):
        return []  # a URL, a path outside this repository, or an anchor in this page
    path_part, _, fragment = target.partition("#")
    path = (base / path_part).resolve()
    if ROOT != path and ROOT not in path.parents:
        return [f"links to {target}, outside the repository"]
    if not path.exists():
        return [f"links to {target}, which does not exist"]
    if fragment and path.suffix == ".md" and fragment not in anchors(path):
        return [f"links to {target}: {path.name} has no heading with that anchor"]
    return []


def check_anchors(text: str, path: Path) -> list[str]:
    """Links to ``#anchor`` inside the same Markdown file."""
    own = anchors(path)
    return [f"links to #{m.group(1)}: no heading with that anchor here"
            for m in re.finditer(r"\]\(#([^)\s]+)\)", without_code(text)) if m.group(1) not in own]


@functools.lru_cache(maxsize=None)
def _module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


@functools.lru_cache(maxsize=None)
def module_names(path: Path) -> frozenset[str]:
    """Names a module binds at top level, in ``__all__``, or serves through ``__getattr__``."""
    tree = _module_tree(path)
    names: set[str] = set()

    def targets(node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                yield from targets(elt)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    names.update(targets(t))
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                names.update(targets(node.target))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    if "__getattr__" in names:
        names |= strings  # a lazy module: the names it serves are written as strings
    return frozenset(names)


def _class_members(path: Path, name: str) -> Optional[frozenset[str]]:
    """Members of a class defined in ``path`` without base classes (else None: unknown)."""
    for node in _module_tree(path).body:
        if isinstance(node, ast.ClassDef) and node.name == name and not node.bases:
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    members.update(t.id for t in item.targets if isinstance(t, ast.Name))
            return frozenset(members)
    return None


def resolve_module_path(dotted: str) -> Optional[str]:
    """None if ``serve_cleanup.a.b`` (or ``serve_cleanup.a:b``) names something in src/,
    else why not."""
    parts = dotted.replace(":", ".").split(".")[1:]
    directory: Optional[Path] = PKG
    module = PKG / "__init__.py"
    i = 0
    while i < len(parts) and directory is not None:
        if (directory / parts[i] / "__init__.py").exists():
            directory = directory / parts[i]
            module = directory / "__init__.py"
        elif (directory / f"{parts[i]}.py").exists():
            module, directory = directory / f"{parts[i]}.py", None
        else:
            break
        i += 1
    rest = parts[i:]
    if not rest:
        return None
    where = module.relative_to(ROOT)
    if rest[0] not in module_names(module):
        return f"names {dotted}, but {where} has no {rest[0]!r}"
    if len(rest) > 1:
        members = _class_members(module, rest[0])
        if members is not None and rest[1] not in members:
            return f"names {dotted}, but {rest[0]} in {where} has no {rest[1]!r}"
    return None


def check_modules(text: str) -> list[str]:
    problems = []
    for m in MODULE.finditer(text):
        dotted = "serve_cleanup" + m.group(1) + (f":{m.group(2)}" if m.group(2) else "")
        if m.group(1).rsplit(".", 1)[-1] in FILE_SUFFIXES and not m.group(2):
            continue  # a file name such as serve_cleanup.json
        problem = resolve_module_path(dotted)
        if problem:
            problems.append(problem)
    return problems


# --- tests ----------------------------------------------------------------------------------

TEST_FILE = re.compile(r"(?<![\w.-])((?:tests/[\w/]*/)?(test_\w+)\.py)(?:::([\w*]+))?")
TEST_NAME = re.compile(r"(?<![\w/.:*-])(test_\w*\*?)(?![\w*]|\.py|/)")


@functools.lru_cache(maxsize=None)
def defined_tests() -> dict[Path, frozenset[str]]:
    """Every test module under tests/ and the functions and classes it defines."""
    index = {}
    for path in sorted(TESTS.rglob("*.py")):
        if _ignored(path):
            continue
        tree = ast.parse(path.read_text())
        index[path] = frozenset(
            n.name for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        )
    return index


def _defined(pattern: str, names) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def check_tests(text: str) -> list[str]:
    problems = []
    index = defined_tests()
    all_names = {n for names in index.values() for n in names} | {p.stem for p in index}
    for m in TEST_FILE.finditer(text):
        path, stem, name = m.group(1), m.group(2), m.group(3)
        files = ([ROOT / path] if path.startswith("tests/")
                 else [p for p in index if p.name == f"{stem}.py"])
        files = [f for f in files if f in index]
        if not files:
            if not path.startswith("tests/"):  # a full path is reported by check_paths
                problems.append(f"names test file {path}, which is not under tests/")
            continue
        if name and not any(_defined(name, index[f]) for f in files):
            problems.append(f"names {path}::{name}, which is not defined there")
    for m in TEST_NAME.finditer(TEST_FILE.sub(" ", text)):
        name = m.group(1)
        if name != "test_" and not _defined(name, all_names):
            problems.append(f"names test {name}, which no file under tests/ defines")
    return problems


# --- commands, options, exit codes ----------------------------------------------------------

COMMAND = re.compile(r"(?:^|(?<=[\s(\[;|&$]))serve-cleanup(?=[ \t]|$)([^\n#;|&`,)\"']*)", re.M)


def _options(command) -> set[str]:
    import click

    ctx = click.Context(command, info_name=command.name)
    opts = set()
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            opts.update(param.opts)
            opts.update(param.secondary_opts)
    return opts


def check_command_line(rest: str) -> list[str]:
    """``rest`` follows ``serve-cleanup``: a command of the group, then that command's options."""
    import click

    command = cli_group()
    path = "serve-cleanup"
    problems = []
    for token in rest.split():
        word = token.strip("[]{}().:")
        if not word:
            continue
        if word.startswith("-"):
            if word == "--":
                break
            for opt in word.split("=", 1)[0].split("/"):
                if opt and opt not in _options(command):
                    problems.append(f"names `{path} {opt}`: no such option")
        elif isinstance(command, click.Group):
            if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break  # a placeholder (COMMAND, <...>): nothing more to check
            sub = command.commands.get(word)
            if sub is None:
                problems.append(f"names `{path} {word}`: no such command")
                break
            command, path = sub, f"{path} {word}"
    return problems


def check_commands(text: str, markdown: bool) -> list[str]:
    problems = []
    for piece in code_pieces(text, markdown):
        for m in COMMAND.finditer(piece):
            before = piece[:m.start()].rstrip().rsplit(None, 1)[-1:] or [""]
            if before[0] in ("install", "uninstall", "wheel"):
                continue  # the distribution's name, not the command
            problems += check_command_line(m.group(1))
    return problems


EXIT = re.compile(
    r"\bexit(?:s|ed|ing)?(?:\s+with)?(?:\s+(?:codes?|status(?:es)?))?\s+"
    r"(\d+(?!\d|\.\d)(?:(?:\s*,\s*|\s+(?:and|or|to)\s+)\d+(?!\d|\.\d))*)",
    re.I,
)


def check_exit_codes(text: str, markdown: bool) -> list[str]:
    known = cli_exit_codes()
    found = [int(n) for m in EXIT.finditer(without_code(text) if markdown else text)
             for n in re.findall(r"\d+", m.group(1))]
    if markdown:  # tables whose first column is the exit code
        for table in re.finditer(r"(?:^\|.*\|[ \t]*\n)+", text, re.M):
            rows = table.group(0).splitlines()
            head = rows[0].strip("| \t").split("|")[0].strip(" `*").lower()
            if head in ("code", "exit code", "exit status"):
                for row in rows[2:]:
                    cell = row.strip("| \t").split("|")[0].strip(" `*")
                    if cell.isdigit():
                        found.append(int(cell))
    return [f"names exit code {n}, which the CLI's table of exit codes does not have"
            for n in found if n not in known]


# --- the tests ------------------------------------------------------------------------------

TEXTS = all_texts()


def _by_file(texts: list[Text]) -> dict[str, list[Text]]:
    out: dict[str, list[Text]] = {}
    for t in texts:
        out.setdefault(t.label.split(":")[0], []).append(t)
    return out


FILES = _by_file(TEXTS)


def _report(problems: list[tuple[str, str]]) -> str:
    return "\n".join(f"{label}: {p}" for label, p in problems)


@pytest.mark.parametrize("name", sorted(FILES))
def test_files_modules_and_tests_named_exist(name):
    problems = []
    for t in FILES[name]:
        found = check_paths(t.text, t.markdown, t.base) + check_modules(t.text) + check_tests(t.text)
        if t.markdown:
            found += check_anchors(t.text, ROOT / t.label)
        problems += [(t.label, p) for p in found]
    assert not problems, _report(problems)


@pytest.mark.parametrize("name", sorted(FILES))
def test_commands_options_and_exit_codes_named_exist(name):
    pytest.importorskip("click")
    problems = []
    for t in FILES[name]:
        found = check_commands(t.text, t.markdown) + check_exit_codes(t.text, t.markdown)
        problems += [(t.label, p) for p in found]
    assert not problems, _report(problems)


def test_there_is_something_to_check():
    """The patterns find what the docs write: a regex that matches nothing passes silently."""
    assert (ROOT / "README.md") in markdown_files()
    assert any(n.startswith("docs/") for n in FILES) and any(n.startswith("src/") for n in FILES)
    commands = [m for t in TEXTS for piece in code_pieces(t.text, t.markdown) for m in COMMAND.finditer(piece)]
    exits = [m for t in TEXTS if t.markdown for m in EXIT.finditer(without_code(t.text))]
    modules = [m for t in TEXTS for m in MODULE.finditer(t.text)]
    assert len(commands) > 50 and len(exits) > 5 and len(modules) > 20, (len(commands), len(exits), len(modules))


# A made-up page: one good and one broken reference of each kind.
MADE_UP = """\
# A page

## Good

See [the tutorial](docs/tutorial.md), [this part](#good), `src/serve_cleanup/errors.py`,
`serve_cleanup.errors.DeadActorError`, `serve_cleanup._startup:expect_durable`,
`core/records.py`, the tests in `tests/conftest.py`, `test_doc_references.py::test_*` and
`test_there_is_something_to_check`, docs/architecture.md ("Invariants"). Run `serve-cleanup status --json` or
`serve-cleanup purge <actor id> --dry-run`; `pip install serve-cleanup`. It exits 0.

| code | meaning |
|------|---------|
| 4 | no Serve controller runs |

## Broken

[gone](docs/no-such-page.md), [no anchor](docs/tutorial.md#no-such-heading), [here](#nowhere),
`docs/no-such-file.md`, `core/no_such_module.py`, `serve_cleanup.errors.NoSuchError`,
`serve_cleanup.no_such_module`, `test_doc_references.py::test_no_such_test`,
`test_no_such_file.py`, `test_no_such_test_anywhere`, docs/architecture.md, "No such section".

```console
$ serve-cleanup frobnicate
$ serve-cleanup status --no-such-option
```

`serve-cleanup` then exits with status 99.

| code | meaning |
|------|---------|
| 42 | made up |
"""


def _check_made_up(tmp_path: Path, with_cli: bool) -> tuple[list[str], list[str]]:
    """The problems found in MADE_UP's good half and in its broken half, read as a page at
    the repository's root (its relative links start there)."""
    page = tmp_path / "page.md"
    page.write_text(MADE_UP)
    good, broken = MADE_UP.split("## Broken")

    def run(text: str) -> list[str]:
        found = check_paths(text, True, ROOT) + check_modules(text) + check_tests(text)
        found += check_anchors(text, page)
        if with_cli:
            found += check_commands(text, True) + check_exit_codes(text, True)
        return found

    return run(good), run("## Broken" + broken)


def test_the_checks_report_each_kind_of_broken_reference(tmp_path):
    good, broken = _check_made_up(tmp_path, with_cli=False)
    assert good == []
    expected = [
        "links to docs/no-such-page.md, which does not exist",
        "links to docs/tutorial.md#no-such-heading: tutorial.md has no heading with that anchor",
        "links to #nowhere: no heading with that anchor here",
        "names docs/no-such-file.md, which does not exist",
        "names core/no_such_module.py, which is not in src/serve_cleanup",
        "names serve_cleanup.errors.NoSuchError, but src/serve_cleanup/errors.py has no 'NoSuchError'",
        "names serve_cleanup.no_such_module, but src/serve_cleanup/__init__.py has no 'no_such_module'",
        "names test_doc_references.py::test_no_such_test, which is not defined there",
        "names test file test_no_such_file.py, which is not under tests/",
        "names test test_no_such_test_anywhere, which no file under tests/ defines",
        'names docs/architecture.md, "No such section": no such heading there',
    ]
    assert sorted(broken) == sorted(expected)


def test_the_cli_checks_report_a_bad_command_option_and_exit_code(tmp_path):
    pytest.importorskip("click")
    good, broken = _check_made_up(tmp_path, with_cli=True)
    assert good == []
    cli_problems = [p for p in broken if "serve-cleanup" in p or "exit code" in p]
    assert sorted(cli_problems) == sorted([
        "names `serve-cleanup frobnicate`: no such command",
        "names `serve-cleanup status --no-such-option`: no such option",
        "names exit code 99, which the CLI's table of exit codes does not have",
        "names exit code 42, which the CLI's table of exit codes does not have",
    ])
