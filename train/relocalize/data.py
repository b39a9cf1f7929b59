"""The next data version of a tenant: its data plus its feedback, where the newest rule wins.

A correction is a feedback text whose label differs from what the tenant's champion predicts for
it: the tenant's rule has moved, from the champion's label (the *overturned* label) to the new one.
An older data row is **contradicted** by a correction when

- it carries the correction's overturned label, and
- its text is close to the corrected text: cosine similarity of the base encoder's mean-pooled
  embeddings at least ``threshold`` (``ATTUNE_RELOCALIZE_SIMILARITY``, default 0.4).

A contradicted row takes the label of the correction nearest to it: the new rule, applied to the
older rows it covers. So 40 corrections do not sit beside hundreds of older rows that say the
opposite, and the tenant keeps all its rows (John goes short on gold: his "gold rises" rows become
``negative`` and his "gold falls" rows ``positive``, as his corrections say; his rows about oil,
steady gold or corporate news, whose ``neutral`` label no correction overturned, stay as they are).
Dropping the contradicted rows instead was tried first: it left John with 12% of his rows about
gold, and the model learned to answer ``neutral``. Feedback on a text that is also a data row
replaces that row. Rows the feedback confirms are kept as they are.

Feedback changes which texts carry a label, never the set of labels: when relabelling would leave a
label of the data with fewer than :data:`MIN_ROWS_PER_LABEL` rows, that label's rows keep it (the
report names the label). Adding or retiring a label is a new data file and ``attune finetune``.

Splits: data rows keep the split of their text (``train._data.split_of``); feedback rows are split
with a larger test share (:data:`FEEDBACK_FRACTIONS`), so the promotion gate's held-out rows include
the newest feedback.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from train._data import Example, TenantData, load_tenant_data, split_of, write_jsonl

logger = logging.getLogger("attune.train")
FEEDBACK_FRACTIONS = (0.6, 0.15, 0.25)
MIN_ROWS_PER_LABEL = 5  # as train._data.load_tenant_data asks of every label


@dataclasses.dataclass(frozen=True)
class Correction:
    text: str
    label: str
    overturned: str  # what the champion predicted


@dataclasses.dataclass
class NextData:
    """The rows of the next data version and how they were made."""

    rows: list[dict]
    feedback_rows: int
    corrections: list[Correction]
    contradicted: list[dict]  # {"text", "label" (old), "new_label", "because" (the correction's text), "similarity"}
    replaced: int  # data rows whose exact text has feedback (the feedback row replaces them)
    kept_labels: list[str] = dataclasses.field(default_factory=list)  # labels relabelling would have emptied

    def report(self) -> dict:
        return {"rows": len(self.rows), "feedback_rows": self.feedback_rows, "corrections": len(self.corrections),
                "contradicted_rows": len(self.contradicted), "replaced_rows": self.replaced,
                "labels_kept_whole": self.kept_labels, "contradicted_examples": self.contradicted[:5]}


def corrections_of(feedback: Sequence[dict], predicted: Sequence[str]) -> list[Correction]:
    """The feedback items whose label differs from the champion's prediction (same order)."""
    return [Correction(item["text"], item["label"], guess)
            for item, guess in zip(feedback, predicted) if item["label"] != guess]


def contradicted(rows: Sequence[Example], corrections: Sequence[Correction],
                 embed: Callable[[list[str]], np.ndarray], threshold: float) -> dict[int, tuple[Correction, float]]:
    """Index of each row a correction contradicts -> (the nearest such correction, similarity)."""
    by_label: dict[str, list[Correction]] = {}
    for c in corrections:
        by_label.setdefault(c.overturned, []).append(c)
    found: dict[int, tuple[str, float]] = {}
    for label, group in by_label.items():
        candidates = [i for i, row in enumerate(rows) if row.label == label]
        if not candidates:
            continue
        similarity = embed([rows[i].text for i in candidates]) @ embed([c.text for c in group]).T
        best, nearest = similarity.max(axis=1), similarity.argmax(axis=1)
        for i, score, j in zip(candidates, best, nearest):
            if score >= threshold:
                found[i] = (group[int(j)], round(float(score), 4))
    return found


def next_rows(data: Sequence[Example], feedback: Sequence[dict], predicted: Sequence[str],
              embed: Callable[[list[str]], np.ndarray], threshold: float) -> NextData:
    """Feedback rows first (a ``--max-train-rows`` cut keeps them), then the data rows whose text has no
    feedback, each contradicted one with its nearest correction's label."""
    corrections = corrections_of(feedback, predicted)
    newest = {item["text"].strip(): item for item in feedback}
    kept = [row for row in data if row.text.strip() not in newest]
    found = contradicted(kept, corrections, embed, threshold)
    emptied = _emptied_labels(kept, feedback, found)
    found = {i: hit for i, hit in found.items() if kept[i].label not in emptied}
    rows = [_row(f"feedback-{n}", item["text"], item["label"]) for n, item in enumerate(feedback, start=1)]
    rows += [_row(row.id or f"row-{row.row}", row.text, found[i][0].label if i in found else row.label)
             for i, row in enumerate(kept)]
    changed = [{"text": kept[i].text, "label": kept[i].label, "new_label": c.label, "because": c.text,
                "similarity": score} for i, (c, score) in sorted(found.items())]
    return NextData(rows=rows, feedback_rows=len(feedback), corrections=corrections, contradicted=changed,
                    replaced=len(data) - len(kept), kept_labels=emptied)


def _emptied_labels(rows: Sequence[Example], feedback: Sequence[dict], found: dict) -> list[str]:
    """The labels of ``rows`` that relabelling ``found`` would empty, or take below MIN_ROWS_PER_LABEL rows."""
    after: dict[str, int] = {}
    for i, row in enumerate(rows):
        label = found[i][0].label if i in found else row.label
        after[label] = after.get(label, 0) + 1
    for item in feedback:
        after[item["label"]] = after.get(item["label"], 0) + 1
    before: dict[str, int] = {}
    for row in rows:
        before[row.label] = before.get(row.label, 0) + 1
    emptied = sorted(label for label, count in before.items()
                     if after.get(label, 0) == 0 or after.get(label, 0) < MIN_ROWS_PER_LABEL <= count)
    if emptied:
        logger.warning("relocalize: relabelling the rows that feedback contradicts would leave labels %s with fewer "
                       "than %d rows; their rows keep their labels", emptied, MIN_ROWS_PER_LABEL)
    return emptied


def write_next_data(next_data: NextData, path: Path, *, endpoint_url: Optional[str] = None) -> TenantData:
    """Write the rows as JSONL, validate them like any tenant file, and split feedback rows for the gate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, next_data.rows)
    loaded = load_tenant_data(str(path), endpoint_url=endpoint_url)
    feedback_texts = {row["text"].strip() for row in next_data.rows if row["id"].startswith("feedback-")}
    examples = [e for split in (loaded.train, loaded.validation, loaded.test) for e in split]
    splits: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for example in sorted(examples, key=lambda e: e.row):
        is_feedback = example.text.strip() in feedback_texts
        splits[split_of(example.text, FEEDBACK_FRACTIONS if is_feedback else (0.8, 0.1, 0.1))].append(example)
    return dataclasses.replace(loaded, **splits)


def data_dir(settings, tenant: str) -> Path:
    """Where a tenant's relocalized data versions are written (erased with the tenant)."""
    return Path(settings.home) / "data" / tenant


def _row(row_id: str, text: str, label: str) -> dict:
    return {"id": row_id, "text": text, "label": label}


def sentence_embedder(base_dir: Path, max_seq_len: int = 64, batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    """``embed(texts)``: the base encoder's L2-normalised mean-pooled embeddings (sentence-transformers' rule)."""
    import torch
    from transformers import AutoModel

    from registry import mean_pool
    from train._base import load_tokenizer

    tokenizer, model = load_tokenizer(base_dir), AutoModel.from_pretrained(str(base_dir)).eval()

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = tokenizer(texts[i:i + batch_size], truncation=True, padding=True, max_length=max_seq_len,
                                return_tensors="pt")
                pooled = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)

    return embed
