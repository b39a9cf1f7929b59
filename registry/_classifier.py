"""The PyTorch half of the artifact contract (``registry._artifact``): the mean-pooled classifier, writing
an export, and loading one to score texts.

Imports torch and transformers; ``registry/__init__`` exports these names lazily. Importing this module
registers ``attune_mean_pool_bert`` with transformers' Auto classes, so in a process that has attune's
classifier loaded, ``AutoModelForSequenceClassification.from_pretrained(export)`` builds the same
mean-pooled model; elsewhere it fails, naming the unknown model type.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    MPNetConfig,
    MPNetModel,
    MPNetPreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from registry._artifact import MEAN_POOL_MODEL_TYPE, MEAN_POOL_TYPES, mean_pool, mean_pool_family, resolve_base, scores
from registry._manifest import max_seq_len, read_manifest, write_manifest


class MeanPoolBertConfig(BertConfig):
    """A BERT config whose ``model_type`` says the head reads mean-pooled token states."""

    model_type = MEAN_POOL_MODEL_TYPE


class MeanPoolBertForSequenceClassification(BertForSequenceClassification):
    """A BERT sequence classifier that mean-pools token states over the attention mask instead of using
    the [CLS] pooler (sentence encoders such as all-MiniLM-L6-v2 were trained that way; their pooler
    was never tuned for sentences). The weights are a ``BertForSequenceClassification`` checkpoint,
    the pooler kept but unused."""

    config_class = MeanPoolBertConfig

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        logits = self.classifier(self.dropout(mean_pool(hidden, attention_mask)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class MeanPoolMPNetConfig(MPNetConfig):
    model_type = MEAN_POOL_TYPES["mpnet"]


class MeanPoolMPNetForSequenceClassification(MPNetPreTrainedModel):
    """An MPNet encoder whose linear head reads mean-pooled token states, as all-mpnet-base-v2's own
    sentence-transformers pooling does (transformers' MPNet classifier reads the first token)."""

    config_class = MeanPoolMPNetConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.mpnet(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.classifier(self.dropout(mean_pool(hidden, attention_mask)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


MEAN_POOL_CLASSES = {"bert": MeanPoolBertForSequenceClassification, "mpnet": MeanPoolMPNetForSequenceClassification}
for _config, _model in ((MeanPoolBertConfig, MeanPoolBertForSequenceClassification),
                        (MeanPoolMPNetConfig, MeanPoolMPNetForSequenceClassification)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForSequenceClassification.register(_config, _model, exist_ok=True)


def classifier_class(model_dir: Path):
    """The class that loads ``model_dir`` (a base or a full export): attune's mean-pooled classifier of its
    encoder family when it is mean-pooled (``registry._artifact.mean_pool_family``), else transformers'
    Auto class."""
    family = mean_pool_family(model_dir)
    return MEAN_POOL_CLASSES[family] if family else AutoModelForSequenceClassification


def save_export(model, tokenizer, out_dir: Path, manifest: dict) -> Path:
    """Write a model directory by the contract: the weights (full) or the PEFT adapter and head (LoRA) with
    the classifier's ``config.json``, the tokenizer and ``attune.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    if hasattr(model, "get_base_model"):  # PEFT saves the adapter alone: say what the classifier is
        model.get_base_model().config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    write_manifest(out_dir, manifest)
    return out_dir


def load_classifier(model_dir: Path, manifest: dict, base_dir: Optional[Path] = None):
    """The classifier of an export (``manifest`` is its ``attune.json``), in eval mode; a LoRA export's
    base comes from ``base_dir``, else from the manifest's ``base``."""
    from transformers.utils import logging as hf_logging

    if manifest["method"] != "lora":
        return classifier_class(model_dir).from_pretrained(str(model_dir)).eval()
    from peft import PeftModel

    base_dir = Path(base_dir) if base_dir is not None else resolve_base(manifest["base"])
    labels = list(manifest["labels"])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is "newly initialized" here; the adapter's replaces it
    try:
        base = classifier_class(base_dir).from_pretrained(
            str(base_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)})
    finally:
        hf_logging.set_verbosity(verbosity)
    return PeftModel.from_pretrained(base, str(model_dir)).eval()


class ExportedClassifier:
    """An export loaded to score texts: ``logits`` and calibrated ``predict`` (what ``attune predict``
    and the MLflow pyfunc answer; serving's batched path computes the same)."""

    def __init__(self, model_dir: Path, base_dir: Optional[Path] = None, manifest: Optional[dict] = None):
        self.model_dir = Path(model_dir)
        self.manifest = manifest if manifest is not None else read_manifest(self.model_dir)
        self.labels: list[str] = list(self.manifest["labels"])
        self.max_seq_len = max_seq_len(self.manifest)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = load_classifier(self.model_dir, self.manifest, base_dir)

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(list(texts[i:i + batch_size]), truncation=True, padding=True,
                                     max_length=self.max_seq_len, return_tensors="pt")
                out.append(self.model(**enc).logits.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))

    def predict(self, texts: Sequence[str], temperature: float, temperature_slope: float = 0.0) -> list[dict]:
        """Each text's ``{"label", "scores"}`` at the version's ``temperature`` and ``temperature_slope``."""
        return [scores(row, self.labels, temperature, temperature_slope) for row in self.logits(texts)]
