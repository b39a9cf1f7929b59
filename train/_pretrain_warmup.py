"""Head warm-up before continued pretraining: a new MLM head trains alone, the encoder frozen.

all-MiniLM-L6-v2 ships without an MLM head, so ``--init minilm`` starts from a random one (its
held-out perplexity is above the vocabulary size). Training everything from the first step sends
that head's random gradients into the encoder and distorts the features every tenant later
fine-tunes from: linear probing before fine-tuning (Kumar et al., 2022, "Fine-Tuning can Distort
Pretrained Features") avoids that. So the head trains alone first, on the same masked stream,
with the whole encoder (word embeddings included, which the decoder is tied to) frozen: only the
head's transform and output bias move. It runs before DeepSpeed takes the model, in plain PyTorch,
with the head's gradients averaged over the ranks so that every rank keeps the same head.
"""
from __future__ import annotations

import logging
import time

logger = logging.getLogger("attune.train")
HEAD_LR = 1e-3  # the head is small and starts random; the encoder's rate would take hundreds of steps


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
    import torch
    import torch.distributed as dist

    head = head_parameters(wrapped.model)
    for p in wrapped.parameters():
        p.requires_grad_(False)
    for p in head:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(head, lr=HEAD_LR, weight_decay=0.0)
    wrapped.to(device).eval()  # no dropout: the encoder is a fixed feature extractor here
    losses: list[float] = []
    started = last = time.monotonic()
    try:
        for step in range(1, steps + 1):
            inputs, labels = mask(next(batches), step)
            loss = wrapped(input_ids=inputs.to(device), labels=labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p in head:  # the mean over ranks: every rank keeps the same head
                dist.all_reduce(p.grad)
                p.grad /= world
            optimizer.step()
            losses.append(float(loss.detach()))
            now = time.monotonic()
            if rank == 0 and (now - last >= interval_s or step == steps):
                last = now
                logger.info("head warm-up %d/%d  loss %.4f  (encoder frozen, %.0f s)", step, steps, losses[-1],
                            now - started)
    finally:
        for p in wrapped.parameters():
            p.requires_grad_(True)
        wrapped.train()
    return losses
