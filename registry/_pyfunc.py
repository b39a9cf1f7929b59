"""Every registered tenant version is an MLflow Model: attune's export plus an ``MLmodel`` with a pyfunc flavor.

At registration (``registry._register``) the export is staged (hard links, else copies) with the flavor's
files beside it, and that directory is what is checksummed and uploaded::

    MLmodel                          flavor python_function: loader_module registry._pyfunc,
                                     model_config {temperature, temperature_slope: the version's
                                     calibration}; the signature
                                     (text: string -> label: string, scores: map of label -> double)
                                     and the input example
    input_example.json, serving_input_example.json
    python_env.yaml, conda.yaml, requirements.txt

so ``mlflow.pyfunc.load_model("models:/tenant.<t>@champion")`` and ``mlflow models serve -m ...
--env-manager local`` answer what ``attune predict`` and the HTTP endpoint answer: mean pooling, the
head, the labels and the version's temperature, all from ``registry._classifier``. Loading needs
attune installed (the loader module is this one) and, for a LoRA version, its base where the manifest
says. Only the writing side imports mlflow; ``_load_pyfunc`` does not.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional

from cluster import UsageError
from registry._artifact import CONFIG, check_model_dir, lora_config
from registry._errors import InvalidModelDirError, RegistryError
from registry._manifest import temperature_slope as manifest_slope

logger = logging.getLogger("attune.registry")
LOADER_MODULE = "registry._pyfunc"
MLMODEL = "MLmodel"
FLAVOR_FILES = (MLMODEL, "input_example.json", "serving_input_example.json", "python_env.yaml", "conda.yaml",
                "requirements.txt")
INPUT_COLUMN = "text"
EXAMPLE_TEXTS = ["gold is up 150% in after-hours trading", "the meeting moved to Thursday"]
_PACKAGES = ("attune", "mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas")


class PyfuncInputError(RegistryError, UsageError, ValueError):
    """What was passed to a tenant version's pyfunc ``predict`` is not a list of texts."""

    http_status = 422
    code = "invalid_pyfunc_input"


@contextlib.contextmanager
def mlflow_model_dir(model_dir: Path, temperature: float, temperature_slope: float = 0.0) -> Iterator[Path]:
    """``model_dir`` (checked by the artifact contract) staged in a temporary folder as an MLflow Model
    whose pyfunc uses ``temperature`` and ``temperature_slope``; the folder is removed on exit.
    ``model_dir`` is not changed, and flavor files it already holds (an export downloaded from the
    registry) are written anew."""
    model_dir = Path(model_dir)
    manifest = check_model_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix="attune-mlflow-model-") as tmp:
        staged = Path(tmp) / "model"
        shutil.copytree(model_dir, staged, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(*FLAVOR_FILES))
        if manifest["method"] == "lora" and not (staged / CONFIG).is_file():
            _add_lora_config(staged, manifest)
        write_flavor(staged, manifest, temperature, temperature_slope)
        yield staged


def _add_lora_config(directory: Path, manifest: dict) -> None:
    try:
        config = lora_config(manifest)
    except (InvalidModelDirError, OSError, ValueError) as exc:  # registering needs no base: say what is missing
        logger.warning("%s: a LoRA export without %s, whose base is not here to make one (%s); plain transformers "
                       "may load it as the base alone", directory, CONFIG, exc)
        return
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)
    return dst


def write_flavor(directory: Path, manifest: dict, temperature: float, temperature_slope: float = 0.0) -> None:
    """Write ``MLmodel``, the input example and the environment files into the export ``directory``."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    directory = Path(directory)
    model = Model(signature=signature(),
                  metadata={"attune.method": manifest["method"], "attune.labels": list(manifest["labels"])})
    _save_example(model, pd.DataFrame({INPUT_COLUMN: EXAMPLE_TEXTS}), str(directory))
    requirements = _requirements(manifest["method"])
    _write_environment(directory, requirements)
    mlflow.pyfunc.add_to_model(model, loader_module=LOADER_MODULE, conda_env="conda.yaml",
                               python_env="python_env.yaml", model_config={"temperature": float(temperature),
                                             "temperature_slope": float(temperature_slope)})
    model.save(str(directory / MLMODEL))


def signature():
    """``text: string`` in; ``label: string`` and ``scores: {label: double}`` out (one row per text)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Map, Schema

    return ModelSignature(inputs=Schema([ColSpec(DataType.string, INPUT_COLUMN)]),
                          outputs=Schema([ColSpec(DataType.string, "label"), ColSpec(Map(DataType.double), "scores")]))


def _requirements(method: str) -> list[str]:
    names = (*_PACKAGES, "peft") if method == "lora" else _PACKAGES
    found = []
    for name in names:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(name)
    return found


def _write_environment(directory: Path, requirements: list[str]) -> None:
    from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv

    (directory / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
    _mlflow_conda_env(path=str(directory / "conda.yaml"), additional_pip_deps=requirements, install_mlflow=False)
    _PythonEnv.current().to_yaml(str(directory / "python_env.yaml"))


# -- loading (mlflow.pyfunc.load_model calls this module's _load_pyfunc) -----------------------------

def _load_pyfunc(path: str, model_config: Optional[dict] = None) -> TenantPyfunc:
    """MLflow's loader hook: ``path`` is the version's model directory."""
    config = model_config or {}
    return TenantPyfunc(Path(path), config.get("temperature"), config.get("temperature_slope"))


class TenantPyfunc:
    """A tenant version as a pyfunc: ``predict`` takes texts (a DataFrame with a ``text`` column, a
    Series or a list) and returns a DataFrame with ``label`` and ``scores`` per text."""

    def __init__(self, model_dir: Path, temperature: Optional[float] = None, temperature_slope: Optional[float] = None):
        from registry._classifier import ExportedClassifier

        self.classifier = ExportedClassifier(model_dir)
        manifest = self.classifier.manifest
        self.temperature = float(manifest["temperature"] if temperature is None else temperature)
        self.temperature_slope = manifest_slope(manifest) if temperature_slope is None else float(temperature_slope)

    def predict(self, model_input, params: Optional[dict] = None):
        import pandas as pd

        rows = self.classifier.predict(_texts(model_input), self.temperature, self.temperature_slope)
        return pd.DataFrame({"label": [r["label"] for r in rows], "scores": [r["scores"] for r in rows]})


def _texts(model_input) -> list[str]:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise PyfuncInputError(f"the input has the columns {list(model_input.columns)[:10]} but no "
                                   f"{INPUT_COLUMN!r}; pass pd.DataFrame({{'{INPUT_COLUMN}': [...]}})")
        model_input = model_input[INPUT_COLUMN]
    if isinstance(model_input, str):
        model_input = [model_input]
    texts = list(model_input.tolist() if isinstance(model_input, pd.Series) else model_input)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise PyfuncInputError(f"rows {bad[:10]} are not strings (the first is {texts[bad[0]]!r}); every "
                               f"{INPUT_COLUMN!r} must be a text")
    return texts
