"""Randomly initialised encoders for tests and CPU smoke runs of the benchmarks: a tiny BERT
saved as a backbone folder, and an encoder of each supported family in memory."""

from __future__ import annotations

from pathlib import Path


def build_tiny_bert(folder: str | Path, hidden: int = 32, layers: int = 2,
                    seed: int = 0, dropout: float = 0.1) -> Path:
    """Save a random BERT (``hidden`` wide, ``layers`` deep) with the packaged MiniLM tokenizer.

    The real vocabulary keeps tokenization realistic while the model runs in milliseconds;
    ``dropout`` (BERT's default 0.1) is its hidden and attention dropout.
    """
    import torch
    from transformers import BertConfig, BertModel

    from aes_core.models.backbone import load_tokenizer, packaged_minilm_path

    folder = Path(folder)
    tok = load_tokenizer(packaged_minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden,
                     max_position_embeddings=512, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# the encoder families the fold models are checked on (MiniLM, mpnet, DeBERTa-v3): their configs
ENCODER_FAMILIES = {"bert": "BertConfig", "mpnet": "MPNetConfig", "deberta": "DebertaV2Config"}
SMALL_ENCODER = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64)


def random_encoder(family: str, small: bool = True):
    """An encoder of ``family`` (a key of ``ENCODER_FAMILIES``) with random weights: 4 layers,
    32 wide when ``small``, else the family's default (base) size."""
    import transformers

    config = getattr(transformers, ENCODER_FAMILIES[family])
    return transformers.AutoModel.from_config(config(**(SMALL_ENCODER if small else {})))
