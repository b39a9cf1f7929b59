"""Training recipes for a tenant with few labels, in plain PyTorch on one process.

Three recipes build attune's mean-pooled classifier (``registry.classifier_class``: a linear head on
the mean of the encoder's token states) from a handful of labelled rows:

- ``setfit``: SetFit (Tunstall et al., 2022). The sentence encoder is first fine-tuned
  contrastively on pairs of rows (same label: cosine 1, different labels: cosine 0), then the head
  is a logistic regression on the tuned encoder's mean-pooled embeddings. It maps onto attune's
  classifier exactly, so the export and serving are unchanged.
- ``lp-ft``: the head is a logistic regression on the frozen encoder's embeddings (the linear
  probe), then the whole classifier is fine-tuned as ``attune finetune`` does.
- ``full``: the whole classifier from a random head, as ``attune finetune`` does by default.

``tests/benchmarks/few_labels.py`` measures them; ``train.finetune.crossval`` runs the chosen one.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

RECIPES = ("setfit", "lp-ft", "full")


@dataclass(frozen=True)
class Recipe:
    """One small-data recipe and its settings (the defaults are the measured ones: docs/benchmarks.md)."""

    name: str = "lp-ft"
    max_seq_len: int = 48
    batch_size: int = 16
    pairs_per_row: int = 4          # setfit: contrastive pairs drawn per labelled row (half positive)
    max_pairs: int = 1000           # setfit: at most this many pairs in its one epoch
    contrastive_lr: float = 2e-5    # setfit: the encoder's learning rate (SetFit's default)
    epochs: int = 5                 # lp-ft, full: as attune finetune's full default
    lr: float = 1e-4                # lp-ft, full: as attune finetune's full default
    seed: int = 0


def _torch():
    import torch

    return torch


def encode(tokenizer, texts: Sequence[str], max_seq_len: int):
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_seq_len, return_tensors="pt")


def embed(model, tokenizer, texts: Sequence[str], max_seq_len: int, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled token states of ``texts`` under ``model.base_model`` (the classifier's encoder), eval mode."""
    from registry import mean_pool

    torch = _torch()
    was_training = model.training
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths batch with little padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            batch = encode(tokenizer, [texts[j] for j in rows], max_seq_len)
            hidden = model.base_model(**batch).last_hidden_state
            out[rows] = mean_pool(hidden, batch["attention_mask"]).numpy()
    model.train(was_training)
    return out


def logits_of(model, tokenizer, texts: Sequence[str], max_seq_len: int) -> np.ndarray:
    """The classifier's logits: its head applied to :func:`embed` (dropout off)."""
    torch = _torch()
    features = torch.as_tensor(embed(model, tokenizer, texts, max_seq_len))
    with torch.no_grad():
        return model.classifier(features).numpy().astype(np.float64)


def fit_linear_head(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float | None = None):
    """Multinomial logistic regression on ``x`` (standardised inside, full-batch L-BFGS), returned as the
    ``(weight, bias)`` of a linear layer on the raw features. ``l2`` defaults to 1 / (2 n), the penalty
    of scikit-learn's ``LogisticRegression(C=1)`` (SetFit's head) in mean-loss units."""
    torch = _torch()
    l2 = 1.0 / (2 * len(y)) if l2 is None else l2
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.as_tensor((x - mean) / std, dtype=torch.float64)
    target = torch.as_tensor(np.asarray(y, dtype=np.int64))
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ weight + bias, target) + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w = weight.detach().numpy() / std[:, None]
    b = bias.detach().numpy() - mean @ w
    return w.T.astype(np.float32), b.astype(np.float32)  # nn.Linear's (out, in) layout


def set_head(model, weight: np.ndarray, bias: np.ndarray) -> None:
    torch = _torch()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.as_tensor(weight))
        model.classifier.bias.copy_(torch.as_tensor(bias))


def contrastive_pairs(labels: Sequence[int], pairs_per_row: int, max_pairs: int, seed: int) -> list[tuple]:
    """SetFit's pairs: for each row, ``pairs_per_row`` / 2 with a row of its label (target 1) and as many
    with a row of another label (target 0), shuffled, at most ``max_pairs``."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    pairs = []
    for _ in range(max(1, pairs_per_row // 2)):
        for i, label in enumerate(labels):
            same = [j for j in by_label[label] if j != i]
            other = [j for j in range(len(labels)) if labels[j] != label]
            if same:
                pairs.append((i, rng.choice(same), 1.0))
            if other:
                pairs.append((i, rng.choice(other), 0.0))
    rng.shuffle(pairs)
    return pairs[:max_pairs]


def contrastive_tune(model, tokenizer, texts: Sequence[str], labels: Sequence[int], recipe: Recipe) -> int:
    """One epoch of cosine-similarity loss (SetFit's) on :func:`contrastive_pairs`, on ``model.base_model``
    with mean pooling; linear warm-up over the first 10% of steps. Returns the number of pairs."""
    from registry import mean_pool

    torch = _torch()
    pairs = contrastive_pairs(list(labels), recipe.pairs_per_row, recipe.max_pairs, recipe.seed)
    encoder = model.base_model
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=recipe.contrastive_lr, weight_decay=0.01)
    steps = math.ceil(len(pairs) / recipe.batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()

    def pooled(rows):
        batch = encode(tokenizer, [texts[j] for j in rows], recipe.max_seq_len)
        return mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"])

    for start in range(0, len(pairs), recipe.batch_size):
        chunk = pairs[start:start + recipe.batch_size]
        cosine = torch.nn.functional.cosine_similarity(pooled([p[0] for p in chunk]), pooled([p[1] for p in chunk]))
        loss = torch.nn.functional.mse_loss(cosine, torch.tensor([p[2] for p in chunk]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return len(pairs)


def supervised_tune(model, tokenizer, texts: Sequence[str], labels: Sequence[int], recipe: Recipe) -> None:
    """``attune finetune``'s full recipe in one process: AdamW (weight decay 0.01), linear warm-up over
    10% of the steps then linear decay, ``recipe.epochs`` epochs, cross-entropy."""
    torch = _torch()
    generator = torch.Generator().manual_seed(recipe.seed)
    steps = recipe.epochs * math.ceil(len(texts) / recipe.batch_size)
    warmup = max(1, steps // 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(order), recipe.batch_size):
            rows = order[start:start + recipe.batch_size]
            loss = model(**encode(tokenizer, [texts[j] for j in rows], recipe.max_seq_len), labels=y[rows]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def train_small(base_dir: Path, label_names: list[str], texts: Sequence[str], labels: Sequence[int],
                recipe: Recipe):
    """A classifier for ``label_names`` trained on ``texts`` / ``labels`` (indices) with ``recipe``;
    returns ``(model, tokenizer)``, the model in eval mode."""
    from train._base import load_tokenizer
    from train.finetune.model import build_classifier

    if recipe.name not in RECIPES:
        raise ValueError(f"unknown small-data recipe {recipe.name!r}; use one of {', '.join(RECIPES)}")
    _torch().manual_seed(recipe.seed)
    tokenizer = load_tokenizer(base_dir)
    model = build_classifier(base_dir, label_names, seed=recipe.seed)
    if recipe.name == "setfit":
        contrastive_tune(model, tokenizer, texts, labels, recipe)
    if recipe.name in ("setfit", "lp-ft"):
        features = embed(model, tokenizer, texts, recipe.max_seq_len)
        set_head(model, *fit_linear_head(features, np.asarray(labels), len(label_names)))
    if recipe.name in ("lp-ft", "full"):
        supervised_tune(model, tokenizer, texts, labels, recipe)
    return model.eval(), tokenizer
