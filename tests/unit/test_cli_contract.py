"""The CLI's contract: commands from entry points, --version, help with defaults, exit codes, one error tree."""
from __future__ import annotations

import argparse
import importlib
import pickle
import subprocess
import sys

import pytest
import tomllib
from pydantic import BaseModel, Field, ValidationError

from cluster import AttuneError, UsageError, flag_errors
from cluster.cli import ENTRY_POINT_GROUP, build_parser, command_entry_points, main
from tests.conftest import REPO_ROOT

PACKAGES = ("cluster", "registry", "train", "serve", "tune")


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("attune",)):
    """Every (command path, parser, its one-line help) in the tree."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _one_line_helps(parser: argparse.ArgumentParser) -> dict[tuple[str, ...], str]:
    helps = {}
    for path, sub in _walk(parser):
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps.update({(*path, a.dest): a.help for a in action._choices_actions})
    return helps


def test_the_commands_are_the_entry_points_pyproject_declares_in_its_order():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert [e.name for e in command_entry_points()] == list(declared)
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(commands.choices) == list(declared)
    for entry in command_entry_points():  # each entry point adds exactly its own command
        parser = argparse.ArgumentParser()
        entry.load()(parser.add_subparsers())
        added = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert list(added.choices) == [entry.name]


def test_the_installed_metadata_declares_the_same_commands():
    from importlib import metadata

    installed = {e.name: e.value for e in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert installed == {e.name: e.value for e in command_entry_points()}


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("attune 0.1.0")


def test_every_command_and_action_has_a_one_line_help_and_a_description():
    parser = build_parser()
    helps = _one_line_helps(parser)
    for path, sub in _walk(parser):
        if path == ("attune",):
            continue
        assert helps.get(path), f"`{' '.join(path)}` has no one-line help in its parent's command list"
        assert "\n" not in helps[path]
        assert sub.description, f"`{' '.join(path)} --help` has no description"


def test_every_flag_has_help_and_shows_its_default_once():
    for path, sub in _walk(build_parser()):
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            flag = action.option_strings[-1]
            assert action.help, f"`{' '.join(path)} {flag}` has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "(default" not in action.help, f"`{' '.join(path)} {flag}` names its default by hand"
                assert f"(default: {action.default})" in " ".join(text.split())


def test_finetune_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE per-worker micro-batch size (default: 16)" in out
    assert "--lr LR peak learning rate (default: 1e-4 with --method full, 2e-3 with --method lora)" in out


def test_cluster_imports_no_other_package():
    """``cluster`` is the bottom layer; the CLI root finds the others' commands through entry points."""
    code = ("import sys, cluster.cli; cluster.cli.build_parser; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {PACKAGES!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert {m.split(".")[0] for m in eval(out)} == {"cluster"}


def test_a_usage_error_exits_2_and_a_runtime_failure_exits_1(tmp_path, attune_home, capsys, monkeypatch):
    assert main(["finetune", "--tenant", "john", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    # a store that is not there is a service that is down: exit 1, a message, no traceback
    monkeypatch.setattr("registry._store.make_client", _unreachable_client)
    assert main(["registry", "list"]) == 1
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "Traceback" not in err


def _unreachable_client(uri):
    from registry._store import _guarded

    def connect():
        raise ConnectionError("[Errno 111] Connection refused")

    return _guarded(connect, uri)


def test_an_unexpected_exception_is_a_bug_and_keeps_its_traceback(monkeypatch, attune_home):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr("registry.cli._run_list", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["registry", "list"])


def test_a_pydantic_error_from_a_bug_is_not_taken_for_a_users_mistake(monkeypatch, attune_home):
    class Strict(BaseModel):
        value: int

    def broken(args):
        Strict(value="not a number")

    monkeypatch.setattr("registry.cli._run_list", broken)
    with pytest.raises(ValidationError):
        main(["registry", "list"])


def test_flag_errors_names_each_flag_and_value():
    class Options(BaseModel):
        num_workers: int = Field(ge=1)
        lr: float = Field(gt=0)

    with pytest.raises(ValidationError) as info:
        Options(num_workers=0, lr=-1)
    message = flag_errors(info.value, "finetune options", {"num_workers": "--workers"})
    assert message.startswith("invalid finetune options: ")
    assert "--workers=0: Input should be greater than or equal to 1" in message
    assert "--lr=-1: Input should be greater than 0" in message


def _error_classes():
    seen = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, Exception):
                seen.append(value)
    for name in ("train._errors", "tune._errors", "registry._errors", "serve._errors", "serve._keys", "cluster._jobs",
                 "cluster._runtime", "cluster.demo", "train.pretrain.corpus"):
        module = importlib.import_module(name)
        seen += [v for v in vars(module).values()
                 if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == name]
    return sorted(set(seen), key=lambda c: f"{c.__module__}.{c.__name__}")


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_is_an_attune_error_with_an_exit_code_and_pickles(cls):
    assert issubclass(cls, AttuneError)
    assert cls.exit_code == (2 if issubclass(cls, UsageError) else 1)
    if cls.__name__ == "DataValidationError":
        error = cls("data.jsonl", ["row 3: empty text"])
    else:
        error = cls("what went wrong")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls and str(again) == str(error)


def test_which_errors_are_the_users():
    from registry import InvalidTenantError, RegistryError, RegistryUnavailableError, TenantNotFoundError
    from serve import ServeError
    from train import ConfigError, DataValidationError, TrainError
    from tune import SpaceError, TuneError

    for cls in (ConfigError, DataValidationError, InvalidTenantError, TenantNotFoundError, SpaceError):
        assert cls.exit_code == 2, cls
    for cls in (TrainError, TuneError, RegistryError, RegistryUnavailableError, ServeError):
        assert cls.exit_code == 1, cls
