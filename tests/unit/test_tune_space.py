"""Search spaces: the default one, YAML files, and every way a space can be wrong (no Ray)."""
from pathlib import Path

import pytest

from tune import SearchSpace, SpaceError, TuneJob, default_space, load_space
from tune._space import parse_space

CONFIG_DIR = Path(__file__).resolve().parents[2] / "tune" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_loads(path):
    space = load_space(path)
    assert isinstance(space, SearchSpace) and space.searched()


def test_default_space_covers_the_issue_keys_and_lora_only_with_lora():
    full = default_space("full", max_epochs=4)
    assert set(full.searched()) == {"lr", "batch_size", "epochs", "weight_decay", "warmup_ratio"}
    assert full.lr.kind == "loguniform" and full.max_epochs(99) == 4
    lora = default_space("lora", max_epochs=4)
    assert {"lora_rank", "lora_alpha"} <= set(lora.searched())
    assert lora.lr.values[0] > full.lr.values[0]  # LoRA trains fewer parameters at higher rates
    assert default_space("full", max_epochs=1).epochs.kind == "fixed"


def test_yaml_space_parses_every_form(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {loguniform: [1.0e-5, 1.0e-3]}\nbatch_size: {choice: [8, 16]}\n"
                    "epochs: {randint: [2, 3]}\nweight_decay: {uniform: [0.0, 0.2]}\nwarmup_ratio: 0.05\n")
    space = load_space(path)
    assert space.summary() == {"lr": "loguniform[1e-05, 0.001]", "batch_size": "choice[8, 16]",
                               "epochs": "randint[2, 3]", "weight_decay": "uniform[0.0, 0.2]",
                               "warmup_ratio": "0.05"}
    assert set(space.searched()) == {"lr", "batch_size", "epochs", "weight_decay"}
    params = space.param_space()
    assert params["warmup_ratio"] == 0.05
    assert params["epochs"].lower == 2 and params["epochs"].upper == 4  # Tune's randint excludes its upper end
    assert space.max_epochs(10) == 3
    assert set(space.mutations()) == {"lr", "weight_decay"}


@pytest.mark.parametrize("text, named", [
    ("learning_rate: {loguniform: [1.0e-5, 1.0e-3]}\n", "unknown key 'learning_rate'"),
    ("lr: {normal: [0.1, 0.2]}\n", "lr: unknown distribution 'normal'"),
    ("lr: {loguniform: [0, 0.1]}\n", "lr: loguniform needs low > 0"),
    ("lr: {uniform: [0.1, 0.01]}\n", "lr: uniform needs [low, high] with low < high"),
    ("lr: {choice: [0.001, 5]}\n", "lr: 5 is out of range"),
    ("batch_size: {uniform: [8, 32]}\n", "batch_size: is a whole number"),
    ("epochs: {randint: [1, 500]}\n", "epochs: 500 is out of range"),
    ("weight_decay: {choice: []}\n", "weight_decay: choice needs at least one value"),
    ("lr: fast\n", "lr: expected a plain value"),
])
def test_malformed_space_names_the_bad_key(tmp_path, text, named):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert named in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("text", ["", "{}\n", "# nothing\n", "lr: 0.001\nepochs: 2\n"])
def test_empty_space_is_an_error(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match="nothing to search|no hyperparameter"):
        load_space(path)


def test_unreadable_and_unparsable_files_say_so(tmp_path):
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- lr\n")
    with pytest.raises(SpaceError, match="mapping"):
        load_space(listed)


def _job(**overrides) -> TuneJob:
    values = dict(tenant="john", data="john.jsonl", space=default_space("full"))
    values.update(overrides)
    return TuneJob(**values)


def test_lora_keys_need_lora():
    space = parse_space({"lr": {"loguniform": [1e-4, 1e-3]}, "lora_rank": {"choice": [4, 8]}}, "s.yaml")
    with pytest.raises(SpaceError, match=r"lora_rank only apply with --method lora"):
        _job(space=space, method="full")
    job = _job(space=space, method="lora")
    config = job.finetune_config({"lr": 2e-4, "lora_rank": 4})
    assert (config.method, config.lora_rank, config.lr) == ("lora", 4, 2e-4)


def test_trial_config_is_the_finetune_config_with_sampled_values():
    job = _job(num_workers=1, max_seq_len=32, max_train_rows=100, seed=3)
    config = job.finetune_config({"lr": 1e-4, "batch_size": 8.0, "epochs": 3})
    assert (config.lr, config.batch_size, config.epochs, config.num_workers) == (1e-4, 8, 3, 1)
    assert (config.max_seq_len, config.max_train_rows, config.seed) == (32, 100, 3)
    assert config.register_model is False  # a trial never registers; the search hands off the best one
    assert job.experiment_name == "tune-john"


@pytest.mark.parametrize("overrides, message", [
    ({"trials": 0}, "trials"),
    ({"scheduler": "pbt", "search": "optuna"}, "pbt explores by itself"),
    ({"scheduler": "pbt", "search": "random",
      "space": parse_space({"batch_size": {"choice": [8, 16]}}, "s")}, "perturbs lr or weight_decay"),
    ({"tenant": "Bad Tenant"}, "invalid tenant id"),
    ({"time_budget_s": 0}, "time_budget_s"),
])
def test_job_rejects_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        _job(**overrides)


def test_head_warmup_is_a_fixed_option_a_space_may_search(tmp_path):
    from cluster import get_settings
    from cluster.cli import build_parser
    from tune.cli import job_from_args

    settings = get_settings(home=tmp_path)
    argv = ["tune", "--tenant", "john", "--data", "john.jsonl"]
    assert job_from_args(build_parser().parse_args(argv), settings).finetune_config({}).head_warmup_steps == 0
    job = job_from_args(build_parser().parse_args(argv + ["--head-warmup-steps", "32"]), settings)
    assert job.finetune_config({"lr": 1e-4}).head_warmup_steps == 32  # every trial, as finetune's flag
    searched = parse_space({"lr": 1e-4, "head_warmup_steps": {"choice": [0, 64]}}, "s.yaml")
    assert _job(space=searched, head_warmup_steps=32).finetune_config({"head_warmup_steps": 64.0}) \
        .head_warmup_steps == 64  # a sampled value wins, as a whole number
    with pytest.raises(SpaceError, match="head_warmup_steps: is a whole number"):
        parse_space({"head_warmup_steps": {"uniform": [0, 64]}}, "s.yaml")
    with pytest.raises(SpaceError, match="head_warmup_steps: -1 is out of range"):
        parse_space({"head_warmup_steps": {"choice": [-1, 64]}}, "s.yaml")
    with pytest.raises(ValueError, match="head_warmup_steps"):
        _job(head_warmup_steps=-1)
