"""`attune pretrain` options: validation in the config, clear CLI errors (exit 2), nothing left behind."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cluster.cli import main
from train.pretrain.config import PretrainConfig


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"sentence number {i} about markets\n" for i in range(200)))
    return path


def _cli(home, *flags, capsys):
    code = main(["--home", str(home), "pretrain", *flags])
    return code, capsys.readouterr().err


def _nothing_left(home) -> bool:
    return not home.exists() or not any(p.name in ("ray_results", "bases", "mlflow.db") for p in home.iterdir())


@pytest.mark.parametrize("flags, message", [
    (["--preset", "tiny", "--zero-stage", "0", "--offload", "cpu"],
     "--offload cpu needs --zero-stage 1, 2 or 3"),
    (["--preset", "tiny", "--init", "minilm"], "pass exactly one of --preset"),
    ([], "pass exactly one of --preset"),
    (["--init", "minilm", "--tokenizer", "train"], "--tokenizer train cannot be combined with --init"),
    (["--preset", "tiny", "--tokenizer", "minilm", "--vocab-size", "1000"], "--vocab-size only applies"),
    (["--preset", "tiny", "--name", "Bad Name"], "--name='Bad Name'"),
    (["--preset", "tiny", "--seq-len", "4"], "--seq-len=4"),
])
def test_invalid_options_exit_2_with_the_flag_named(tmp_path, corpus, capsys, flags, message):
    home = tmp_path / "home"
    code, err = _cli(home, "--corpus", str(corpus), *flags, capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert _nothing_left(home)


@pytest.mark.parametrize("empty, message", [(False, "does not exist"), (True, "is empty")])
def test_missing_or_empty_corpus_exits_2_before_ray(tmp_path, capsys, empty, message):
    home, path = tmp_path / "home", tmp_path / "corpus.txt"
    if empty:
        path.touch()
    code, err = _cli(home, "--corpus", str(path), "--preset", "tiny", capsys=capsys)
    assert code == 2 and message in err
    assert _nothing_left(home)


def test_unknown_preset_exits_2(tmp_path, corpus, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--home", str(tmp_path), "pretrain", "--corpus", str(corpus), "--preset", "huge"])
    assert exc.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_missing_init_directory_names_the_flag(tmp_path, corpus, capsys):
    code, err = _cli(tmp_path / "home", "--corpus", str(corpus), "--init", str(tmp_path / "nowhere"), capsys=capsys)
    assert code == 2 and "--init" in err and "--base" not in err


def test_resume_needs_an_interrupted_run(tmp_path, corpus, capsys):
    code, err = _cli(tmp_path / "home", "--resume", capsys=capsys)
    assert code == 2 and "--resume needs --name" in err
    code, err = _cli(tmp_path / "home", "--name", "ghost", "--resume", capsys=capsys)
    assert code == 2 and "no interrupted pretraining run named 'ghost'" in err


def _interrupted_run(home, corpus, **overrides):
    """The folder an interrupted run leaves in the Ray Train storage (its settings file)."""
    config = PretrainConfig(name="wiki", corpus=str(corpus), preset="tiny", **overrides)
    run_dir = home / "ray_results" / "pretrain-wiki"
    (run_dir / "attune_tokenizer").mkdir(parents=True)
    (run_dir / "attune_pretrain.json").write_text(json.dumps({"config": config.model_dump(mode="json"),
                                                               "corpus_hash": "0" * 64}))
    return run_dir


def test_resume_with_changed_settings_names_them(tmp_path, corpus, capsys):
    home = tmp_path / "home"
    _interrupted_run(home, corpus, lr=1e-3)
    code, err = _cli(home, "--name", "wiki", "--resume", "--lr", "5e-4", "--seq-len", "64", capsys=capsys)
    assert code == 2 and "--lr 0.0005 (the run used 0.001)" in err and "--seq-len 64 (the run used 128)" in err


def test_a_new_run_may_not_reuse_an_interrupted_runs_name(tmp_path, corpus, capsys):
    home = tmp_path / "home"
    _interrupted_run(home, corpus)
    code, err = _cli(home, "--corpus", str(corpus), "--preset", "tiny", "--name", "wiki", capsys=capsys)
    assert code == 2 and "--name wiki --resume" in err


def test_resume_may_extend_max_steps(tmp_path, corpus):
    from cluster import get_settings
    from train.pretrain.driver import resume_config

    home = tmp_path / "home"
    _interrupted_run(home, corpus, max_steps=100)
    config = resume_config(get_settings(home=str(home)), "wiki", {"max_steps": 300})
    assert config.resume and config.max_steps == 300 and config.differences(
        json.loads((home / "ray_results/pretrain-wiki/attune_pretrain.json").read_text())["config"]) == []


def test_non_empty_out_dir_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, err = _cli(tmp_path / "home", "--corpus", str(corpus), "--preset", "tiny", "--out", str(out),
                     capsys=capsys)
    assert code == 2 and "already exists and is not empty" in err


def test_defaults_follow_the_preset_or_init():
    scratch = PretrainConfig(name="a", corpus="c.txt", preset="tiny")
    assert scratch.effective_tokenizer == "train" and scratch.effective_vocab_size == 4096
    assert scratch.effective_lr == 5e-4 and not scratch.use_activation_checkpointing
    assert PretrainConfig(name="a", corpus="c.txt", preset="base").use_activation_checkpointing
    assert PretrainConfig(name="a", corpus="c.txt", preset="large", vocab_size=8000).effective_vocab_size == 8000
    cont = PretrainConfig(name="a", corpus="c.txt", init="minilm")
    assert cont.effective_tokenizer == "init" and cont.effective_vocab_size is None and cont.effective_lr == 5e-5
    assert PretrainConfig(name="a", corpus="c.txt", preset="small", tokenizer="minilm").effective_vocab_size is None


def test_config_rejects_unknown_fields():
    with pytest.raises(ValidationError, match="extra"):
        PretrainConfig(name="a", corpus="c.txt", preset="tiny", epochs=3)


@pytest.mark.parametrize("checkpointed", [True, False])
def test_ctrl_c_exits_130_and_says_whether_the_run_can_resume(tmp_path, corpus, capsys, monkeypatch, checkpointed):
    import train.pretrain.driver

    home = tmp_path / "home"

    def interrupted(config, settings):  # what Ray Train's SIGINT handler leaves us with
        if checkpointed:
            (settings.ray_storage_dir / config.run_name).mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(train.pretrain.driver, "pretrain", interrupted)
    code, err = _cli(home, "--corpus", str(corpus), "--preset", "tiny", "--name", "wiki", capsys=capsys)
    assert code == 130
    assert ("attune pretrain --name wiki --resume" in err) == checkpointed
    assert ("nothing was kept" in err) != checkpointed
