"""Every runnable command in the README's ```bash blocks is one attune accepts as written.

The README's synopsis blocks (plain ``` fences, with placeholders such as ``T`` and ``PATH``)
are not checked; the ```bash blocks are what a newcomer pastes. ``attune`` lines must parse
with the real CLI parser, ``make`` targets must exist in the Makefile, and every benchmark
module named must exist.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cluster.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _bash_lines() -> list[str]:
    """Logical lines (continuations joined, comments dropped) of every ```bash block."""
    lines: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", README, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
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


ATTUNE_COMMANDS = [c for line in _bash_lines() for c in _attune_commands(line)]


def test_the_readme_has_a_runnable_walkthrough():
    commands = {tuple(c[:2]) for c in ATTUNE_COMMANDS}
    for expected in [("data", "demo"), ("serve", "up"), ("serve", "down"), ("registry", "ui")]:
        assert expected in commands, f"no `attune {' '.join(expected)}` in the README's ```bash blocks"
    assert any(c[0] in ("finetune", "predict") for c in ATTUNE_COMMANDS)


@pytest.mark.parametrize("args", ATTUNE_COMMANDS, ids=lambda a: " ".join(a)[:60])
def test_every_attune_command_in_the_readme_parses(args, capsys):
    parser = build_parser()
    try:
        parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"README: `attune {' '.join(args)}` is refused: {capsys.readouterr().err.strip()}")


def test_make_targets_and_benchmark_modules_in_the_readme_exist():
    makefile = (REPO / "Makefile").read_text()
    for line in _bash_lines():
        for target in re.findall(r"(?:^|&&\s*)make (\w+)", line):
            assert re.search(rf"^{target}:", makefile, flags=re.M), f"README runs `make {target}`; no such target"
        for module in re.findall(r"python -m (tests\.benchmarks\.\w+)", line):
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"README names {module}; no such module"
