"""Word ids from a dict (``WordIds``) give exactly the tokenizer's ids, and step aside where
they cannot: space characters the tokenizer deletes, added tokens' text, other tokenizers."""

from __future__ import annotations

import pytest

from aes_core.models.backbone import load_tokenizer, packaged_minilm_path
from aes_core.models.tokens import TokenEncoder, TokenPlan, tokenize_windows
from aes_core.models.word_ids import WordIds, unsafe_spaces
from tests.serving_support import sample_essays

# every character str.split() cuts at, between words, plus texts the dict must not read
SEPARATED = [f"first{c}second third" for c in
             "\t\n\r \x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f"
             "\u205f\u3000"]
ODD = ["zero\u200bwidth join", "nul\x00inside a word", "del\x7fhere", "a [MASK] in text",
       "[Cls] mixed case", "!" * 700, "a" * 3000, "", "   \n ", "Ünïcödé İstanbul Σσς",
       "中文字符 and 日本語", "emoji 😀 “quoted” — dash… ’s", "e\u0301 x\u1b44\u0301y"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(packaged_minilm_path())


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sample_essays(40)["full_text"].tolist() + SEPARATED + ODD


@pytest.mark.parametrize("plan", [TokenPlan(64), TokenPlan(512),
                                  TokenPlan(48, chunking=True, chunk_overlap=8, max_chunks=3),
                                  TokenPlan(48, tail_tokens=16)],
                         ids=["first_64", "first_512", "chunked", "head_tail"])
@pytest.mark.parametrize("chars_per_token", [0.0, 6.0])
def test_word_ids_equal_the_tokenizer(tok, texts, plan, chars_per_token):
    enc = TokenEncoder(tok, plan, chars_per_token)
    assert enc._words is not None
    assert enc.windows(texts) == tokenize_windows(tok, texts, plan)
    assert len(enc._words) > 100  # the essays went through the dict
    off = TokenEncoder(tok, plan, chars_per_token, word_cache=0)
    assert off._words is None and off.windows(texts) == enc.windows(texts)


def test_left_truncation_keeps_the_tail(tok, texts):
    left = load_tokenizer(packaged_minilm_path())
    left.truncation_side = "left"
    enc = TokenEncoder(left, TokenPlan(64))
    got = enc.windows(texts)
    assert got == tokenize_windows(left, texts, TokenPlan(64))
    assert got != TokenEncoder(tok, TokenPlan(64)).windows(texts)  # the side mattered


def test_texts_the_dict_cannot_read_go_to_the_tokenizer(tok):
    words = WordIds(tok.backend_tokenizer, list(tok.get_added_vocab()), 1000)
    odd = unsafe_spaces(words._tok)
    # the BERT normalizer deletes these control characters, where str.split() cuts
    assert set("\x0b\x0c\x1c\x1f\x85") <= set(odd)
    assert not set(" \t\n\r\xa0\u3000") & set(odd)
    assert words.body("one\x0btwo") is None
    assert words.body("a [MASK] here") is None and words.body("a [mask] here") is None
    assert words.body("one\xa0two") == words.body("one two") != []


def test_the_dict_is_bounded_and_ids_do_not_change(tok, texts):
    enc = TokenEncoder(tok, TokenPlan(64), word_cache=5)
    assert enc.windows(texts) == tokenize_windows(tok, texts, TokenPlan(64))
    assert 0 < len(enc._words) <= 5


def test_other_tokenizers_are_not_read_word_by_word():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    assert not WordIds.applies_to(bpe)
    piece = Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
    piece.normalizer = normalizers.BertNormalizer()
    piece.pre_tokenizer = pre_tokenizers.Whitespace()  # splits differently from BERT's
    assert not WordIds.applies_to(piece)
    piece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    assert WordIds.applies_to(piece)
