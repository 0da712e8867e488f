"""ParallelTokenizer: worker processes give exactly the in-process batches, in order."""

import numpy as np
import pandas as pd
import pytest

from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import RegressorSpec
from aes_core.serving.onnx_scorer import length_sorted_batches, pad_batch, tokenize
from aes_core.serving.parallel_tokenize import ParallelTokenizer
from tests.conftest import SAMPLE_DIR


@pytest.mark.parametrize(("newlines", "chunk_size"), [(False, 32), (True, 3)])
def test_parallel_batches_equal_in_process_batches(tiny_backbone, newlines, chunk_size):
    texts = pd.read_csv(SAMPLE_DIR / "test.csv.gz")["full_text"].head(37).tolist()
    texts[5] = "short"
    spec = RegressorSpec(head="mean", max_length=96, add_newline_tokens=newlines)
    tok = load_tokenizer(tiny_backbone)
    batches = [[texts[i] for i in idx] for idx in length_sorted_batches(texts, 8)]
    # chunk_size 3 cuts every batch of 8 into re-padded pieces of different widths
    with ParallelTokenizer(tiny_backbone, spec, workers=2, chunk_size=chunk_size) as pt:
        pt.warm_up()
        got = list(pt.map(batches))
    assert len(got) == len(batches) == 5
    for batch, (ids, mask) in zip(batches, got, strict=True):
        want_ids, want_mask = pad_batch(tokenize(tok, batch, spec), int(tok.pad_token_id))
        assert ids.dtype == np.int64 and mask.dtype == np.int64
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(mask, want_mask)
    assert max(ids.shape[1] for ids, _ in got) == 96  # long essays are truncated


def test_bad_pool_settings_are_refused(tiny_backbone):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ParallelTokenizer(tiny_backbone, RegressorSpec(head="mean"), workers=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ParallelTokenizer(tiny_backbone, RegressorSpec(head="mean"), chunk_size=0)
