"""Train a new head alone, the encoder frozen: the "linear probe" half of LP-FT.

A new head starts random. Training everything from the first step sends that head's random
gradients into the pretrained encoder and distorts its features (Kumar et al., 2022,
"Fine-Tuning can Distort Pretrained Features"); training the head alone first avoids that.
Both of attune's heads use this: pretraining's new MLM head (``--init minilm``) and, with
``attune finetune --head-warmup-steps``, a tenant's new classification head. It runs before
DeepSpeed takes the model, in plain PyTorch, with the head's gradients averaged over the ranks
so that every rank keeps the same head.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

logger = logging.getLogger("attune.train")
HEAD_LR = 1e-3  # the head is small and starts random; an encoder's rate would take hundreds of steps


def train_head_alone(module, head: list, loss_at: Callable[[int], object], steps: int, *, rank: int, world: int,
                     interval_s: float) -> list[float]:
    """``steps`` AdamW steps on ``head`` (parameters of ``module``) alone; ``loss_at(step)`` gives each
    step's loss (1-based). Dropout is off and every other parameter is frozen meanwhile; each
    parameter's ``requires_grad`` and the module's mode are restored after. Returns the losses."""
    import torch
    import torch.distributed as dist

    trainable = {id(p): p.requires_grad for p in module.parameters()}
    was_training = module.training
    for p in module.parameters():
        p.requires_grad_(False)
    for p in head:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(head, lr=HEAD_LR, weight_decay=0.0)
    module.eval()  # no dropout: the encoder is a fixed feature extractor here
    losses: list[float] = []
    started = last = time.monotonic()
    try:
        for step in range(1, steps + 1):
            loss = loss_at(step)
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
        for p in module.parameters():
            p.requires_grad_(trainable[id(p)])
        module.train(was_training)
    return losses
