"""Mixed-tenant LoRA batches: PEFT's ``adapter_names=`` against attune's gathered LoRA, on MiniLM.

    .venv/bin/python -m tests.benchmarks.lora_batching [--rows 16] [--adapters 64] [--rank 16] [--json OUT]

One forward pass of the encoder (1 thread, as a 1-CPU replica) over a batch of ``--rows`` headlines
whose rows belong to k different tenants (k = 1, 4, 16 by default), each tenant a random rank-r
LoRA adapter on query, key and value:

- ``base``: the bare encoder, no adapter (the floor);
- ``peft``: a ``PeftModel`` holding every adapter, called with ``adapter_names=[...]`` per row
  (PEFT's mixed-adapter batch; it loops over the distinct adapters in every LoRA layer);
- ``attune``: ``serve._lora.LoraBank``, which gathers each row's adapter and runs two batched
  matmuls per layer;
- ``per-tenant``: the same bank, one forward pass per tenant of the batch (what
  ``model.cross_tenant_batching: false`` does, and Ray Serve's per-model batching would).

Both LoRA paths must give the same hidden states (checked). The table shows median and p99 ms; the
last lines are the ratios of the per-tenant passes' time, and of PEFT's (the baseline), to attune's
one cross-tenant pass, at the largest k.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HEADLINES = ["gold is up 150% in after-hours trading", "gold futures tumble 3% on profit-taking",
             "oil slumps 4% after OPEC meeting", "Barrick Gold names new chief financial officer",
             "the Nasdaq closes higher as chip stocks rally", "bullion holds steady ahead of Fed minutes"]
TARGETS = ["query", "key", "value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=64, help="adapters loaded")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--distinct", type=int, nargs="+", default=[1, 4, 16], help="tenants per batch")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    bench = _Bench(args)
    rows = []
    for k in args.distinct:
        names = [f"t{i % k}" for i in range(args.rows)]
        bench.check_same(names)
        for path in ("base", "peft", "attune", "per-tenant"):
            times = bench.time(path, names, args.repeats)
            rows.append({"path": path, "distinct": k, "median_ms": statistics.median(times),
                         "p99_ms": sorted(times)[min(len(times) - 1, int(0.99 * len(times)))]})
    print(f"{'path':<8} {'tenants/batch':>13} {'median ms':>10} {'p99 ms':>8}")
    for row in rows:
        print(f"{row['path']:<8} {row['distinct']:>13} {row['median_ms']:>10.2f} {row['p99_ms']:>8.2f}")
    k = max(args.distinct)
    median = {(r["path"], r["distinct"]): r["median_ms"] for r in rows}
    peft, ours = median[("peft", k)], median[("attune", k)]
    print(f"per-tenant passes / one cross-tenant pass at {k} tenants per batch of {args.rows}: "
          f"{median[('per-tenant', k)] / ours:.2f}")
    print(f"ratio peft / attune at {k} tenants per batch of {args.rows}: {peft / ours:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


class _Bench:
    def __init__(self, args):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoTokenizer, BertModel

        from serve._artifacts import LoraAdapter
        from serve._lora import LoraBank, encode
        from train import resolve_base

        base = resolve_base("minilm")
        self.tokenizer = AutoTokenizer.from_pretrained(str(base))
        self.base = BertModel.from_pretrained(str(base), add_pooling_layer=False).eval()
        config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS, lora_dropout=0.0)
        self.peft = get_peft_model(BertModel.from_pretrained(str(base), add_pooling_layer=False), config,
                                   adapter_name="t0").eval()
        self.bank = LoraBank(base)
        self.slots = {}
        hidden = self.base.config.hidden_size
        for i in range(args.adapters):
            name = f"t{i}"
            if i:
                self.peft.add_adapter(name, config)
            layers = {}
            for path, module in self.peft.named_modules():
                if hasattr(module, "lora_A") and name in module.lora_A:
                    with torch.no_grad():
                        module.lora_A[name].weight.normal_(0, 0.05)
                        module.lora_B[name].weight.normal_(0, 0.05)
                    scaling = module.scaling[name]
                    short = path.removeprefix("base_model.model.")
                    layers[short] = (module.lora_A[name].weight.t().clone(),
                                     module.lora_B[name].weight.t().clone() * scaling)
            adapter = LoraAdapter(layers=layers, head_weight=torch.zeros(2, hidden), head_bias=torch.zeros(2),
                                  rank=args.rank)
            self.slots[name] = self.bank.add(adapter)
        texts = [HEADLINES[i % len(HEADLINES)] for i in range(args.rows)]
        self.input_ids, self.mask = encode(self.tokenizer, texts, [64] * len(texts))

    def forward(self, path: str, names: list[str]):
        import torch

        with torch.no_grad():
            if path == "base":
                return self.base(input_ids=self.input_ids, attention_mask=self.mask).last_hidden_state
            if path == "peft":
                return self.peft(input_ids=self.input_ids, attention_mask=self.mask,
                                 adapter_names=names).last_hidden_state
            if path == "per-tenant":
                for name in dict.fromkeys(names):
                    rows = [i for i, n in enumerate(names) if n == name]
                    self._bank_forward([name] * len(rows), self.input_ids[rows], self.mask[rows])
                return None
            return self._bank_forward(names, self.input_ids, self.mask)

    def _bank_forward(self, names, input_ids, mask):
        import torch

        with torch.no_grad():
            index = torch.tensor([self.slots[n] for n in names])
            for layer in self.bank.layers.values():
                layer.active = index
            try:
                return self.bank.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            finally:
                for layer in self.bank.layers.values():
                    layer.active = None

    def check_same(self, names: list[str]) -> None:
        import torch

        peft, ours = self.forward("peft", names), self.forward("attune", names)
        assert torch.allclose(peft, ours, atol=1e-4), float((peft - ours).abs().max())

    def time(self, path: str, names: list[str], repeats: int) -> list[float]:
        self.forward(path, names)  # warm
        out = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.forward(path, names)
            out.append((time.perf_counter() - started) * 1000)
        return out


if __name__ == "__main__":
    main()
