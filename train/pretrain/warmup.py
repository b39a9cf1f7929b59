"""Head warm-up before continued pretraining: a new MLM head trains alone, the encoder frozen.

all-MiniLM-L6-v2 ships without an MLM head, so ``--init minilm`` starts from a random one (its
held-out perplexity is above the vocabulary size). Training everything from the first step sends
that head's random gradients into the encoder and distorts the features every tenant later
fine-tunes from: linear probing before fine-tuning (Kumar et al., 2022, "Fine-Tuning can Distort
Pretrained Features") avoids that. So the head trains alone first, on the same masked stream,
with the whole encoder (word embeddings included, which the decoder is tied to) frozen: only the
head's transform and output bias move. It runs before DeepSpeed takes the model, in plain PyTorch,
with the head's gradients averaged over the ranks so that every rank keeps the same head
(``train._head_only``, which a tenant's classification head shares).
"""
from __future__ import annotations

from train._head_only import train_head_alone


def head_warmup_steps(cfg, model) -> int:
    """``--head-warmup-steps``, else 20% of ``--max-steps`` (at most 200) when the MLM head is new."""
    if cfg.head_warmup_steps is not None:
        return cfg.head_warmup_steps
    return min(200, max(1, cfg.max_steps // 5)) if getattr(model, "attune_new_head", False) else 0


def head_parameters(model) -> list:
    """The MLM head's own parameters: everything outside the encoder, less weights tied to it."""
    prefix = model.base_model_prefix + "."
    encoder = {id(p) for name, p in model.named_parameters() if name.startswith(prefix)}
    encoder |= {id(p) for p in model.get_input_embeddings().parameters()}
    return [p for p in model.parameters() if id(p) not in encoder]


def warm_head(wrapped, batches, mask, steps: int, device, rank: int, world: int, interval_s: float) -> list[float]:
    """Train the head of ``wrapped`` (a ``MaskedLMLoss``) for ``steps`` micro-batches; the losses."""
    wrapped.to(device)

    def loss_at(step: int):
        inputs, labels = mask(next(batches), step)
        return wrapped(input_ids=inputs.to(device), labels=labels.to(device))

    try:
        return train_head_alone(wrapped, head_parameters(wrapped.model), loss_at, steps, rank=rank, world=world,
                                interval_s=interval_s)
    finally:
        wrapped.train()
