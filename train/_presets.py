"""Named encoder presets for masked-LM pretraining, all built by one component builder.

    model = build_mlm_model(encoder_config("tiny", vocab_size=4096))

``tiny`` is for tests (about 1M parameters at its default 4,096-token vocabulary);
``small``, ``base`` and ``large`` are about 30M, 110M (BERT-base) and 340M (BERT-large)
at the 30,522-token BERT/MiniLM vocabulary. ``base`` and ``large`` turn on activation
checkpointing by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from train._errors import ConfigError


@dataclass(frozen=True)
class EncoderShape:
    """The sizes one BERT encoder preset fixes."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    default_vocab: int
    activation_checkpointing: bool


PRESETS: dict[str, EncoderShape] = {
    "tiny": EncoderShape(hidden=128, layers=2, heads=2, intermediate=512, default_vocab=4096,
                         activation_checkpointing=False),
    "small": EncoderShape(hidden=512, layers=4, heads=8, intermediate=2048, default_vocab=30522,
                          activation_checkpointing=False),
    "base": EncoderShape(hidden=768, layers=12, heads=12, intermediate=3072, default_vocab=30522,
                         activation_checkpointing=True),
    "large": EncoderShape(hidden=1024, layers=24, heads=16, intermediate=4096, default_vocab=30522,
                          activation_checkpointing=True),
}
MAX_POSITIONS = 512


def preset_shape(preset: str) -> EncoderShape:
    try:
        return PRESETS[preset]
    except KeyError:
        raise ConfigError(f"--preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}") from None


def encoder_config(preset: str, vocab_size: int, pad_token_id: int = 0):
    """The Hugging Face ``BertConfig`` of a preset at ``vocab_size`` tokens."""
    from transformers import BertConfig

    shape = preset_shape(preset)
    return BertConfig(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                      max_position_embeddings=MAX_POSITIONS, pad_token_id=pad_token_id,
                      tie_word_embeddings=True)


def build_mlm_model(config, *, activation_checkpointing: bool = False):
    """A freshly initialised ``BertForMaskedLM`` whose decoder is tied to the word embeddings."""
    from transformers import BertForMaskedLM

    model = BertForMaskedLM(config)
    return _finish(model, activation_checkpointing)


def load_mlm_model(init_dir: Path, *, activation_checkpointing: bool = False):
    """Continue from a local Hugging Face encoder (``--init``).

    An encoder without an MLM head (all-MiniLM-L6-v2 is a plain ``BertModel``) gets a freshly
    initialised head whose decoder is tied to the encoder's word embeddings; ``attune_new_head``
    on the returned model says whether that happened.
    """
    from transformers import AutoConfig, AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(str(init_dir))
    config.tie_word_embeddings = True
    hf_logging.set_verbosity_error()  # "newly initialized: cls.predictions..." is expected here
    model, info = AutoModelForMaskedLM.from_pretrained(str(init_dir), config=config, output_loading_info=True)
    prefix = model.base_model_prefix + "."
    model.attune_new_head = any(not key.startswith(prefix) for key in info["missing_keys"])
    return _finish(model, activation_checkpointing)


def _finish(model, activation_checkpointing: bool):
    model.tie_weights()
    if activation_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def count_parameters(model) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def analytic_parameter_count(preset: str, vocab_size: int) -> int:
    """Parameters of ``BertForMaskedLM`` for a preset, from its sizes alone (decoder tied)."""
    s = preset_shape(preset)
    h, i = s.hidden, s.intermediate
    embeddings = (vocab_size + MAX_POSITIONS + 2) * h + 2 * h  # word, position, 2 token types, LayerNorm
    attention = 4 * (h * h + h) + 2 * h  # q, k, v, output projection + LayerNorm
    feed_forward = (h * i + i) + (i * h + h) + 2 * h
    head = (h * h + h) + 2 * h + vocab_size  # transform dense + LayerNorm, decoder bias
    return embeddings + s.layers * (attention + feed_forward) + head
