"""Linear probe of base encoders on newsdesk: frozen mean-pooled embeddings, one logistic regression.

    .venv/bin/python -m tests.benchmarks.linear_probe [--base minilm] [--base DIR ...] [--data PATH]
        [--train-rows 2000] [--train-rows 0] [--max-seq-len 48] [--l2 1e-3]

A 1-epoch fine-tune's test score depends on its seed and its optimisation as much as on the
base: from one base, seeds 0-2 of the demo's 2,000-row fine-tune span 12 points of macro-F1.
The probe asks only what the base's representation holds. Each base embeds every text of
newsdesk's train and test splits once (mean-pooled last hidden states, as attune's classifier
pools them, truncated to --max-seq-len tokens). A multinomial logistic regression with L2
penalty is then fitted to convergence (L-BFGS, full batch, features standardised on the train
rows) on the first N train rows (as ``attune finetune --max-train-rows N`` takes them; 0 means
all) and scored on the test split. There is no seed, dropout or learning-rate schedule to vary.

It also prints the mean pairwise cosine similarity of the test embeddings (anisotropy: how much
every text's embedding shares one direction). The first --base is the baseline; the table gives
each base's probe macro-F1 and its difference from the baseline, in points. ``--data`` defaults
to newsdesk as ``attune data demo`` builds it, split by the project's own loader.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.benchmarks.domain_adaptation import tenant_data


def embed(base: str, texts: list[str], max_seq_len: int, batch_size: int = 128) -> np.ndarray:
    """Mean-pooled last hidden states of ``texts`` under the encoder ``base`` (``minilm`` or a directory)."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from train._base import load_tokenizer, resolve_base

    hf_logging.set_verbosity_error()  # the unused pooler and MLM-head weights are expected here
    base_dir = resolve_base(base)
    tokenizer = load_tokenizer(base_dir)
    model = AutoModel.from_pretrained(str(base_dir), add_pooling_layer=False).eval()
    chunks = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_seq_len,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(chunks)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, num_classes: int, l2: float):
    """Multinomial logistic regression (mean cross-entropy + l2 * |W|^2), fitted with full-batch L-BFGS."""
    import torch

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x = torch.as_tensor((x_train - mean) / std, dtype=torch.float64)
    y = torch.as_tensor(y_train)
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w, b = weight.detach().numpy(), bias.detach().numpy()
    return lambda features: (((features - mean) / std) @ w + b).argmax(1)


def mean_cosine(x: np.ndarray) -> float:
    """Mean pairwise cosine similarity of the rows of ``x`` (self-pairs included)."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centroid = unit.mean(0)
    return float(centroid @ centroid)


def probe(bases: list[str], data, train_rows: list[int], max_seq_len: int, l2: float) -> list[dict]:
    """One row per base: probe test macro-F1 for each train-row count, anisotropy and embedding time."""
    from train._metrics import macro_f1

    index = data.label_index()
    texts = [e.text for e in data.train] + [e.text for e in data.test]
    y_train = np.array([index[e.label] for e in data.train])
    y_test = np.array([index[e.label] for e in data.test])
    rows = []
    for base in bases:
        started = time.monotonic()
        features = embed(base, texts, max_seq_len)
        seconds = time.monotonic() - started
        x_train, x_test = features[:len(data.train)], features[len(data.train):]
        scores = {}
        for n in train_rows:
            n = n or len(data.train)
            predict = fit_probe(x_train[:n], y_train[:n], len(index), l2)
            scores[n] = macro_f1(y_test, predict(x_test), len(index))
        rows.append({"base": base, "probe_test_macro_f1": scores, "mean_cosine": mean_cosine(x_test),
                     "embed_s": round(seconds, 1)})
        print(f"  probed {base} in {seconds:.0f} s", flush=True)
    return rows


def probe_lines(rows: list[dict], labels: list[str]) -> list[str]:
    """The table: probe macro-F1 per train-row count, its difference from the first row, and anisotropy."""
    counts = list(rows[0]["probe_test_macro_f1"])
    head = f"{'frozen base (linear probe)':<34}" + "".join(f" {f'F1 @{n} rows':>15} {'vs baseline':>11}"
                                                         for n in counts)
    lines = [head + f" {'mean cosine':>11} {'embed s':>7}"]
    for label, row in zip(labels, rows):
        cells = ""
        for n in counts:
            score = row["probe_test_macro_f1"][n]
            gap = (score - rows[0]["probe_test_macro_f1"][n]) * 100
            cells += f" {score:>15.4f} {gap:>+10.2f}p"
        lines.append(f"{label:<34}{cells} {row['mean_cosine']:>11.3f} {row['embed_s']:>7.0f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", action="append", default=None,
                        help="minilm or an encoder directory (repeatable; the first is the baseline; default: minilm)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a tenant file (default: newsdesk, built as the demo does)")
    parser.add_argument("--train-rows", type=int, action="append", default=None,
                        help="first N train rows the probe fits on, 0 = all (repeatable; default: 2000 and 0)")
    parser.add_argument("--max-seq-len", type=int, default=48)
    parser.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on the probe's weights")
    args = parser.parse_args()
    bases, counts = args.base or ["minilm"], args.train_rows or [2000, 0]
    if args.data is not None:
        from train._data import load_tenant_data

        data = load_tenant_data(str(args.data))
    else:
        with tempfile.TemporaryDirectory(prefix="attune-probe-") as workdir:
            data = tenant_data(Path(workdir))[1]
    print(f"splits {data.split_counts()}; labels {sorted(data.label_index())}", flush=True)
    rows = probe(bases, data, counts, args.max_seq_len, args.l2)
    print(f"\nnewsdesk test split macro-F1 of a logistic regression on frozen embeddings; baseline: {bases[0]}")
    print("\n".join(probe_lines(rows, [Path(b).name if b != "minilm" else b for b in bases])))


if __name__ == "__main__":
    main()
