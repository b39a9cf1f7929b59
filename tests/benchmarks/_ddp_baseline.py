"""The baseline for ``train_overhead``: a plain PyTorch DDP loop launched by torchrun.

    torchrun --nproc_per_node 2 -m tests.benchmarks._ddp_baseline --data FILE --out RESULT.json [...]

Same model, tokenizer, batches (length-bucketed, same seed), optimizer and schedule
as an attune fine-tune; no Ray, no DeepSpeed. Rank 0 writes samples/s to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from train._base import load_tokenizer, resolve_base
from train._data import load_tenant_data
from train.finetune.batching import LengthBucketSampler
from train.finetune.config import FinetuneConfig
from train.finetune.driver import worker_payload
from train.finetune.loop import _encode, _lengths, _trim
from train.finetune.model import build_classifier


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    cfg = FinetuneConfig(tenant="bench", data=args.data, batch_size=args.batch_size, epochs=args.epochs,
                         max_seq_len=args.max_seq_len, max_train_rows=args.max_train_rows, seed=args.seed)
    payload = worker_payload(cfg, load_tenant_data(args.data))
    base = resolve_base(cfg.base)
    dataset = _encode(load_tokenizer(base), payload["train"], cfg.max_seq_len)
    torch.manual_seed(cfg.seed)
    classifier = build_classifier(base, payload["labels"])
    pooler = getattr(getattr(classifier, "bert", None), "pooler", None)
    if pooler is not None:  # unused by the mean-pooled head; DDP insists every trained param gets a grad
        pooler.requires_grad_(False)
    model = DistributedDataParallel(classifier)
    sampler = LengthBucketSampler(_lengths(dataset), cfg.batch_size, rank=rank, world=world, seed=cfg.seed,
                                  bucket_batches=1)  # as attune's training loader
    loader = DataLoader(dataset, batch_sampler=sampler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    total = cfg.epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)

    samples, seconds = 0, 0.0
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        model.train()
        started = time.monotonic()
        for input_ids, attention_mask, labels, _ in loader:
            input_ids, attention_mask = _trim(input_ids, attention_mask)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            samples += len(labels)
        seconds += time.monotonic() - started
    if rank == 0:
        with open(args.out, "w") as handle:
            json.dump({"train_samples_per_s": samples * world / seconds, "samples": samples * world,
                       "seconds": seconds}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
