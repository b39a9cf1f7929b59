"""The README and every page under docs/ show only commands and links that work as written.

The ```bash blocks are what a reader pastes, so each ``attune ...`` line in them must parse with
the real CLI parser (the command after ``attune submit ... --`` too), each ``make`` target must
exist in the Makefile, and each ``python -m tests.benchmarks.X`` module must exist. Synopsis
blocks use plain ``` fences (they have placeholders such as ``T`` and ``PATH``) and are not
checked. Every relative link (``docs/serving.md``, ``serving.md#http-api``,
``../cluster/deploy/...``) must point at a file that exists, and at a heading that exists when it
names one.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cluster.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]


def _name(doc: Path) -> str:
    return doc.relative_to(REPO).as_posix()


def _bash_lines(doc: Path) -> list[str]:
    """Logical lines (continuations joined, comments dropped) of every ```bash block of ``doc``."""
    lines: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", doc.read_text(), flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def _attune_commands(line: str) -> list[list[str]]:
    """The argument lists of every ``attune ...`` invocation in a shell line (also inside ``$(...)``)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words = [], []
    for token in [*lexer, ";"]:
        if set(token) <= set("();<>|&"):  # an operator ends a simple command
            if words and words[0] == "attune":
                commands.append(words[1:])
            words = []
        else:
            words.append(token)
    return commands


COMMANDS = [(doc, args) for doc in DOCS for line in _bash_lines(doc) for args in _attune_commands(line)]


def test_there_are_docs_to_check():
    assert (REPO / "docs").is_dir() and len(DOCS) > 1, "docs/*.md are missing"
    assert COMMANDS, "no attune command in any ```bash block"


def test_the_readme_has_a_runnable_walkthrough():
    commands = {tuple(args[:2]) for doc, args in COMMANDS if doc == README}
    for expected in [("data", "demo"), ("serve", "up"), ("serve", "down"), ("registry", "ui")]:
        assert expected in commands, f"no `attune {' '.join(expected)}` in the README's ```bash blocks"
    assert any(args[0] in ("finetune", "predict") for doc, args in COMMANDS if doc == README)


@pytest.mark.parametrize("doc, args", COMMANDS, ids=[f"{_name(d)}: {' '.join(a)[:60]}" for d, a in COMMANDS])
def test_every_attune_command_in_the_docs_parses(doc, args, capsys):
    to_parse = [args]
    if args[0] == "submit" and "--" in args:  # the submitted command is parsed before it is sent, too
        to_parse.append(args[args.index("--") + 1:])
    for argv in to_parse:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{_name(doc)}: `attune {' '.join(argv)}` is refused: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_make_targets_and_benchmark_modules_in_the_docs_exist(doc):
    makefile = (REPO / "Makefile").read_text()
    for line in _bash_lines(doc):
        for target in re.findall(r"(?:^|&&\s*|;\s*)make (\w+)", line):
            assert re.search(rf"^{target}:", makefile, flags=re.M), f"{_name(doc)} runs `make {target}`; no such target"
        for module in re.findall(r"python -m (tests\.benchmarks\.\w+)", line):
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{_name(doc)} names {module}; no such module"


def _strip_fences(text: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1[ \t]*$", "", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    """``text`` without fenced blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", _strip_fences(text))


def _links(doc: Path) -> list[str]:
    """Targets of the inline links and images in ``doc``'s prose: ``[text](target)``."""
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _prose(doc.read_text()))


def _anchors(doc: Path) -> set[str]:
    """The anchors GitHub makes for ``doc``'s headings: lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` ... for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", _strip_fences(doc.read_text()), flags=re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_relative_link_points_at_a_file_that_exists(doc):
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("//"):
            continue  # http(s):, mailto: ... are not files of this repository
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(REPO) if file.is_relative_to(REPO) else file})")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(REPO)})")
    assert not broken, f"{_name(doc)} has broken links: " + "; ".join(broken)
