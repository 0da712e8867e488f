"""ParallelTokenizer: worker processes give exactly the in-process batches, in order."""

import numpy as np
import pandas as pd
import pytest

from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import RegressorSpec
from aes_core.models.tokens import encode_batch, pad_batch, text_batches, tokenize
from aes_core.serving.parallel_tokenize import ParallelTokenizer
from tests.conftest import SAMPLE_DIR


@pytest.mark.parametrize(("newlines", "chunk_size", "chunking"),
                         [(False, 32, False), (True, 3, False), (False, 3, True)])
def test_parallel_batches_equal_in_process_batches(tiny_backbone, newlines, chunk_size, chunking):
    texts = pd.read_csv(SAMPLE_DIR / "test.csv.gz")["full_text"].head(37).tolist()
    texts[5] = "short"
    spec = RegressorSpec(head="mean", max_length=96, add_newline_tokens=newlines,
                         chunking=chunking, chunk_overlap=16, max_chunks=4)
    tok = load_tokenizer(tiny_backbone)
    batches = [[texts[i] for i in idx] for idx in text_batches(texts, 8)]
    # chunk_size 3 cuts every batch of 8 into re-padded pieces of different widths
    with ParallelTokenizer(tiny_backbone, spec, workers=2, chunk_size=chunk_size) as pt:
        pt.warm_up()
        got = list(pt.map(batches))
    assert len(got) == len(batches) == 5
    for batch, b in zip(batches, got, strict=True):
        assert b.input_ids.dtype == np.int64 and b.attention_mask.dtype == np.int64
        want = encode_batch(tok, batch, spec)
        for name, arr in want.feeds().items():
            np.testing.assert_array_equal(b.feeds()[name], arr, err_msg=name)
        if chunking:  # several windows per essay, pooled back to one row per essay
            assert b.input_ids.shape[0] > len(batch) == b.window_weights.shape[0]
        else:  # the truncating path is the one it always was
            want_ids, want_mask = pad_batch(tokenize(tok, batch, spec), int(tok.pad_token_id))
            assert b.window_weights is None
            np.testing.assert_array_equal(b.input_ids, want_ids)
            np.testing.assert_array_equal(b.attention_mask, want_mask)
    assert max(b.input_ids.shape[1] for b in got) == 96  # long essays: full windows


def test_bad_pool_settings_are_refused(tiny_backbone):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ParallelTokenizer(tiny_backbone, RegressorSpec(head="mean"), workers=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ParallelTokenizer(tiny_backbone, RegressorSpec(head="mean"), chunk_size=0)
