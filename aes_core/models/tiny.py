"""A tiny randomly initialised BERT for tests and CPU smoke runs of the benchmarks."""

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
