"""Triton Python-backend model: one exported fold model run with ONNX Runtime.

Inputs ``input_ids`` / ``attention_mask`` (INT64, [batch, seq]); output ``logits`` (FP32,
[batch, 1]). Requests batched together by Triton that share a sequence length run as one
ONNX Runtime batch (never re-padded: the BiLSTM head sees exactly the client's padding); a
malformed request gets its own error and the others still run.
Chunked models (an ONNX input ``window_weights``) take [windows, seq] ids and mask plus FP32
``window_weights`` [essays, windows] and give ``logits`` [essays]; each request runs alone.
Needs only numpy and onnxruntime in the stub's Python.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aes_paths  # noqa: E402, F401  (the project's paths first, before numpy: aes_paths.py)

# isort: split
import json  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

WEIGHTS = "window_weights"  # aes_core.models.tokens.WINDOW_WEIGHTS (kept import-free here)


def _error(msg):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(msg))


def _input(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        self.name = args["model_name"]
        here = os.path.join(args["model_repository"], args["model_version"])
        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads:
            opts.intra_op_num_threads = threads
        self.max_len = int(params.get("max_length", "0") or 0)
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.pooled = WEIGHTS in {i.name for i in self.session.get_inputs()}

    def _validate_weights(self, weights, windows):
        if weights is None:
            return f"{WEIGHTS} is required: this model pools the windows of each essay"
        if weights.ndim != 2 or weights.shape[1] != windows:
            return (f"{WEIGHTS} must be [essays, {windows}] for {windows} windows, got "
                    f"{list(weights.shape)}")
        if weights.shape[0] == 0:
            return "empty batch: send at least one essay"
        if not np.isfinite(weights).all() or (weights < 0).any():
            return f"{WEIGHTS} must be finite and non-negative"
        if (np.abs(weights.sum(axis=1) - 1.0) > 1e-3).any():
            return f"every row of {WEIGHTS} must sum to 1"
        return None

    def _validate(self, ids, mask):
        if ids is None or mask is None:
            return "both input_ids and attention_mask are required"
        if ids.ndim != 2 or mask.ndim != 2:
            return f"expected [batch, seq] inputs, got input_ids {list(ids.shape)}"
        if ids.shape != mask.shape:
            return (f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} "
                    "differ in shape")
        if ids.shape[0] == 0:
            return "empty batch: send at least one essay"
        if ids.shape[1] == 0:
            return "empty sequence: every essay needs at least one token"
        if self.max_len and ids.shape[1] > self.max_len:
            return f"sequence length {ids.shape[1]} exceeds max_length {self.max_len}"
        if ((mask != 0) & (mask != 1)).any():
            return "attention_mask must hold only 0 and 1"
        return None

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []
        for i, req in enumerate(requests):
            ids, mask, weights = (_input(req, n) for n in ("input_ids", "attention_mask", WEIGHTS))
            err = self._validate(ids, mask)
            if not err and self.pooled:
                err = self._validate_weights(weights, ids.shape[0])
            if err:
                responses[i] = _error(f"{self.name}: {err}")
            else:
                good.append((i, ids.astype(np.int64), mask.astype(np.int64),
                             None if weights is None else weights.astype(np.float32)))
        if self.pooled:  # windows of one request pool into its essays only: never merged
            groups = [[item] for item in good]
        else:
            by_width = {}
            for item in good:
                by_width.setdefault(item[1].shape[1], []).append(item)
            groups = list(by_width.values())
        for group in groups:
            feeds = {"input_ids": np.concatenate([g[1] for g in group]),
                     "attention_mask": np.concatenate([g[2] for g in group])}
            if self.pooled:
                feeds[WEIGHTS] = group[0][3]
            try:
                out = np.asarray(self.session.run(["logits"], feeds)[0], dtype=np.float32)
            except Exception as e:  # noqa: BLE001 - reported to the client
                for g in group:
                    responses[g[0]] = _error(f"{self.name}: onnxruntime failed: {e}")
                continue
            if self.pooled:
                responses[group[0][0]] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("logits", out.reshape(-1))])
                continue
            out = out.reshape(-1, 1)
            row = 0
            for i, rids, _, _ in group:
                n = rids.shape[0]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("logits", out[row:row + n])])
                row += n
        return responses

    def finalize(self):
        self.session = None
