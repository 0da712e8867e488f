"""A step's essays tokenized once and read by its partitions: the same ids as tokenizing them
in each partition, and a partition reads every essay from the cache."""

import pytest

from aes_core.config import BackboneSection
from aes_core.models.backbone import load_tokenizer
from aes_core.models.tokens import tokenize_windows
from aes_core.training.datamodule import EssayDataset
from aes_core.training.shared_tokens import share_tokens, shared_encoder

TEXTS = ["A short essay.", "Another essay,\n\nwith two paragraphs and some more words " * 9,
         "Ünïcode and tabs\tand spaces   here.", "A short essay."]


@pytest.mark.parametrize("chunking", [False, True])
def test_shared_windows_equal_each_partitions_own(tmp_path, tiny_backbone, chunking):
    bb = BackboneSection(name="tiny", path=str(tiny_backbone), max_length=24,
                         chunking=chunking, chunk_overlap=4, max_chunks=3)
    done = share_tokens(tiny_backbone, bb, TEXTS, tmp_path / "tokens", threads=2)
    assert done.essays == 3  # distinct texts
    tok = load_tokenizer(tiny_backbone, bb.add_newline_tokens)
    enc = shared_encoder(tok, bb, tmp_path / "tokens", max_entries=10)
    ds = EssayDataset(TEXTS, tok, bb, encoder=enc)
    assert ds.windows == tokenize_windows(tok, TEXTS, bb)
    assert (enc.cache.hits, enc.cache.misses) == (4, 0)
    # an essay the step did not tokenize is tokenized where it is needed
    assert enc.windows(["A new essay."]) == tokenize_windows(tok, ["A new essay."], bb)
    assert enc.cache.misses == 1


def test_a_dataset_refuses_an_encoder_of_another_plan(tmp_path, tiny_backbone):
    bb = BackboneSection(name="tiny", path=str(tiny_backbone), max_length=24)
    tok = load_tokenizer(tiny_backbone, False)
    enc = shared_encoder(tok, bb.model_copy(update={"max_length": 32}), tmp_path, 4)
    with pytest.raises(ValueError, match="the encoder reads essays as"):
        EssayDataset(TEXTS, tok, bb, encoder=enc)
