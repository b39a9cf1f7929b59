"""Every LoRA tenant of one base in a replica, and one forward pass for rows of different tenants.

A :class:`LoraBank` holds the base encoder once. Each tenant's adapter lives in a *slot*: row
``s`` of stacked tensors, one pair per wrapped linear layer (``A[s]``: in x r, ``B[s]``: r x out,
the adapter's scaling folded into ``B``) plus the tenant's head. A batch whose rows belong to
different tenants runs through the encoder once: every wrapped layer gathers each row's ``A`` and
``B`` by the row's slot and adds ``x @ A @ B`` with two batched matmuls (the idea of Punica's BGMV
and S-LoRA), whatever the number of distinct tenants in the batch. PEFT's mixed-adapter batches
(``adapter_names=``) loop over the distinct adapters in Python, in every layer; with a fleet's
batches, where most rows are of different tenants, that loop cost more than the encoder itself
(``tests/benchmarks/lora_batching.py``, figures in ``docs/benchmarks.md``).

A bank holds any base whose classifier mean-pools (``registry.is_mean_pooled``: MiniLM and other BERTs,
all-mpnet-base-v2), with the encoder that classifier holds (:func:`load_encoder`); a replica keeps one
bank per base directory (``serve._cache``), and a batch runs one pass per bank (``serve._batch``).

Adapters of different ranks or targets share a bank: the bank's rank is the largest loaded,
smaller ones are zero-padded (exactly the same result), and a module only some tenants target
holds zeros for the others. Slots are fixed-size, so the memory of ``n`` adapters is ``n`` times
:attr:`LoraBank.slot_bytes`; the cache (``serve._cache``) bounds it by bytes.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from registry import is_mean_pooled, mean_pool, model_type
from serve._artifacts import LoraAdapter
from serve._errors import ModelUnavailableError

GROW_SLOTS = 64  # slots added at a time when the cache set no ``max_slots``


class LoraBank:
    """One base encoder and the LoRA tenants on it (see the module doc). Thread-safe."""

    def __init__(self, base_dir: Path, device: str = "cpu"):
        from transformers import AutoTokenizer

        self.base_dir = Path(base_dir)
        self.device = device
        self.encoder = load_encoder(self.base_dir).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        self.hidden = int(self.encoder.config.hidden_size)
        self.lock = threading.RLock()
        self.layers: dict[str, GatheredLora] = {}
        self.rank = 0
        self.num_labels = 0
        self.capacity = 0
        self.head_weight = None  # (capacity, num_labels, hidden)
        self.head_bias = None  # (capacity, num_labels)
        self.free: list[int] = []
        self.used: set[int] = set()
        self.max_slots: Optional[int] = None  # set by the cache from its memory budget

    # -- slots -------------------------------------------------------------------------------------

    @property
    def slot_bytes(self) -> int:
        """Bytes one adapter takes in this bank, at its current rank, targets and label count."""
        lora = sum((layer.in_features + layer.out_features) * self.rank for layer in self.layers.values())
        return 4 * (lora + self.num_labels * (self.hidden + 1))

    def slot_bytes_with(self, adapter: LoraAdapter) -> int:
        """What every slot would take once ``adapter`` is in (its rank, targets or labels may grow them)."""
        rank = max(self.rank, adapter.rank)
        sizes = {path: layer.in_features + layer.out_features for path, layer in self.layers.items()}
        sizes.update({path: a.shape[0] + b.shape[1] for path, (a, b) in adapter.layers.items()})
        return 4 * (rank * sum(sizes.values()) + max(self.num_labels, adapter.num_labels) * (self.hidden + 1))

    def add(self, adapter: LoraAdapter) -> int:
        """Put ``adapter`` in a free slot; returns the slot."""
        with self.lock, torch.no_grad():
            missing = [p for p in adapter.layers if p not in self.layers]
            if missing:
                self._wrap(missing)
            self._grow(rank=adapter.rank, num_labels=adapter.num_labels)
            slot = self._take_slot()
            try:
                for path, layer in self.layers.items():
                    pair = adapter.layers.get(path)
                    layer.put(slot, *(pair if pair is not None else (None, None)))
                self.head_weight[slot].zero_()
                self.head_bias[slot].zero_()
                self.head_weight[slot, :adapter.num_labels] = adapter.head_weight
                self.head_bias[slot, :adapter.num_labels] = adapter.head_bias
            except Exception:
                self.remove(slot)
                raise
            return slot

    def remove(self, slot: int) -> None:
        with self.lock:
            if slot in self.used:
                self.used.discard(slot)
                self.free.append(slot)

    def _take_slot(self) -> int:
        if not self.free:  # the stacks are allocated for every slot the budget allows, once; their memory
            # is only taken (by the OS) as slots are written, so a new adapter never copies the others
            self._resize(capacity=max(self.capacity + 1, self.max_slots or self.capacity + GROW_SLOTS))
        slot = self.free.pop()
        self.used.add(slot)
        return slot

    def _wrap(self, paths: list[str]) -> None:
        modules = dict(self.encoder.named_modules())
        for path in paths:
            parent_path, _, name = path.rpartition(".")
            linear = modules.get(path)
            if not isinstance(linear, nn.Linear):
                raise ModelUnavailableError(f"the adapter targets {path!r}, which is not a linear layer of base "
                                            f"{self.base_dir}; it was not trained on this base")
            layer = GatheredLora(linear, self.capacity, self.rank)
            setattr(modules[parent_path] if parent_path else self.encoder, name, layer)
            self.layers[path] = layer

    def _grow(self, *, rank: int, num_labels: int) -> None:
        if rank > self.rank or num_labels > self.num_labels:
            self.rank, self.num_labels = max(rank, self.rank), max(num_labels, self.num_labels)
            self._resize(capacity=self.capacity)

    def _resize(self, capacity: int) -> None:
        """Reallocate every stack at ``capacity`` slots and the current rank and label count; the used
        slots keep their contents, zero-padded. Unused slots are left unwritten (``add`` clears a slot)."""
        used = torch.tensor(sorted(self.used), dtype=torch.long)
        for layer in self.layers.values():
            layer.resize(capacity, self.rank, used)
        weight = torch.empty(capacity, self.num_labels, self.hidden, device=self.device)
        bias = torch.empty(capacity, self.num_labels, device=self.device)
        if self.head_weight is not None and len(used):
            old_labels = self.head_weight.shape[1]
            weight[used] = 0.0
            bias[used] = 0.0
            weight[used, :old_labels] = self.head_weight[used]
            bias[used, :old_labels] = self.head_bias[used]
        self.head_weight, self.head_bias = weight, bias
        self.free += list(range(capacity - 1, self.capacity - 1, -1))
        self.capacity = capacity

    # -- inference ---------------------------------------------------------------------------------

    def logits(self, slots: Sequence[int], texts: Sequence[str], max_seq_lens: Sequence[int],
               chunk: int = 64) -> list[np.ndarray]:
        """Each text's logits under its own slot's adapter and head (one array of that tenant's label
        count per row; the caller knows it). Rows of different slots share every forward pass."""
        out: list[np.ndarray] = []
        for i in range(0, len(texts), chunk):
            out += self._forward(slots[i:i + chunk], texts[i:i + chunk], max_seq_lens[i:i + chunk])
        return out

    def _forward(self, slots, texts, max_seq_lens) -> list[np.ndarray]:
        input_ids, mask = encode(self.tokenizer, texts, max_seq_lens)
        index = torch.tensor(list(slots), dtype=torch.long)
        with self.lock, torch.inference_mode():
            for layer in self.layers.values():
                layer.active = index
            try:
                hidden = self.encoder(input_ids=input_ids.to(self.device),
                                      attention_mask=mask.to(self.device)).last_hidden_state
            finally:
                for layer in self.layers.values():
                    layer.active = None
            pooled = mean_pool(hidden, mask.to(self.device))
            logits = torch.bmm(self.head_weight[index], pooled.unsqueeze(-1)).squeeze(-1) + self.head_bias[index]
        return list(logits.float().cpu().numpy())


def load_encoder(base_dir: Path) -> nn.Module:
    """The encoder that attune's mean-pooled classifier of ``base_dir`` holds (``registry.classifier_class``:
    ``BertModel`` for BERT, ``MPNetModel`` for MPNet), without the [CLS] pooler its head never reads; LoRA
    module paths are relative to it. :class:`ModelUnavailableError` for a base that is not mean-pooled."""
    from transformers import AutoModel

    if not is_mean_pooled(base_dir):
        raise ModelUnavailableError(
            f"LoRA serving needs a mean-pooled base (BERT, or MPNet with mean pooling in its 1_Pooling/config.json); "
            f"base {base_dir} is {model_type(base_dir)!r} without mean pooling: serve this tenant as a full "
            "fine-tune (`attune finetune --method full`), or train its adapter on --base minilm or mpnet")
    try:
        return AutoModel.from_pretrained(str(base_dir), add_pooling_layer=False)
    except (OSError, TypeError, ValueError) as exc:  # transformers' messages can list every model type
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelUnavailableError(f"cannot load the encoder of LoRA base {base_dir} ({reason}); a LoRA base is a "
                                    "Hugging Face encoder directory such as minilm or mpnet, not a classifier "
                                    "export") from None


class GatheredLora(nn.Module):
    """A linear layer plus, per row of the batch, that row's tenant's LoRA delta ``x @ A[s] @ B[s]``."""

    def __init__(self, linear: nn.Linear, capacity: int, rank: int):
        super().__init__()
        self.base = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features
        device = linear.weight.device
        self.A = torch.zeros(capacity, self.in_features, rank, device=device)
        self.B = torch.zeros(capacity, rank, self.out_features, device=device)
        self.active: Optional[torch.Tensor] = None  # each row's slot, set for one forward pass

    def forward(self, x):
        y = self.base(x)
        if self.active is None or self.A.shape[-1] == 0:
            return y
        a, b = self.A[self.active], self.B[self.active]
        if x.dim() == 2:
            return y + torch.bmm(torch.bmm(x.unsqueeze(1), a), b).squeeze(1)
        return y + torch.bmm(torch.bmm(x, a), b)

    def put(self, slot: int, a, b) -> None:
        """``a``: (in, r'), ``b``: (r', out) with the scaling folded in, r' <= the bank's rank; None: zeros."""
        self.A[slot].zero_()
        self.B[slot].zero_()
        if a is not None:
            self.A[slot, :, :a.shape[1]] = a
            self.B[slot, :b.shape[0]] = b

    def resize(self, capacity: int, rank: int, used) -> None:
        """New stacks of ``capacity`` slots at ``rank``; the ``used`` slots are copied, zero-padded."""
        old_rank = self.A.shape[2]
        a = torch.empty(capacity, self.in_features, rank, device=self.A.device)
        b = torch.empty(capacity, rank, self.out_features, device=self.B.device)
        if len(used):
            a[used] = 0.0
            b[used] = 0.0
            a[used, :, :old_rank] = self.A[used]
            b[used, :old_rank] = self.B[used]
        self.A, self.B = a, b


def encode(tokenizer, texts: Sequence[str], max_seq_lens: Sequence[int]):
    """Token ids and attention mask, right-padded to the longest row; each text truncated to its own
    tenant's ``max_seq_len``."""
    ids: list[list[int]] = [[] for _ in texts]
    for length in sorted(set(max_seq_lens)):
        rows = [i for i, m in enumerate(max_seq_lens) if m == length]
        encoded = tokenizer([texts[i] for i in rows], truncation=True, max_length=length)["input_ids"]
        for i, row in zip(rows, encoded):
            ids[i] = row
    width = max(len(row) for row in ids)
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], dtype=torch.long)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=torch.long)
    return input_ids, mask
