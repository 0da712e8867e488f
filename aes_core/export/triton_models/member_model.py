"""Triton Python-backend model: one exported fold model run with ONNX Runtime.

Inputs ``input_ids`` / ``attention_mask`` (INT64, [batch, seq]); output ``logits`` (FP32,
[batch, 1]). Requests batched together by Triton that share a sequence length run as one
ONNX Runtime batch (never re-padded: the BiLSTM head sees exactly the client's padding); a
malformed request gets its own error and the others still run.
Needs only numpy and onnxruntime in the stub's Python.
"""

import os
import sys


def _extend_path():
    """The stub ignores PYTHONPATH: prepend the project's paths before numpy is imported."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [p for p in os.environ.get("AES_PYTHONPATH", "").split(os.pathsep) if p]
    listed = os.path.join(here, "python_paths.txt")
    if os.path.exists(listed):
        with open(listed) as f:
            paths += [p for p in f.read().splitlines() if p]
    for p in reversed(list(dict.fromkeys(paths))):
        if p not in sys.path:
            sys.path.insert(0, p)


_extend_path()

import json  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _error(msg):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(msg))


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
            ids_t = pb_utils.get_input_tensor_by_name(req, "input_ids")
            mask_t = pb_utils.get_input_tensor_by_name(req, "attention_mask")
            ids = ids_t.as_numpy() if ids_t is not None else None
            mask = mask_t.as_numpy() if mask_t is not None else None
            err = self._validate(ids, mask)
            if err:
                responses[i] = _error(f"{self.name}: {err}")
            else:
                good.append((i, ids.astype(np.int64), mask.astype(np.int64)))
        by_width = {}
        for item in good:
            by_width.setdefault(item[1].shape[1], []).append(item)
        for group in by_width.values():
            ids = np.concatenate([g[1] for g in group])
            mask = np.concatenate([g[2] for g in group])
            try:
                out = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
                out = np.asarray(out, dtype=np.float32).reshape(-1, 1)
            except Exception as e:  # noqa: BLE001 - reported to the client
                for i, _, _ in group:
                    responses[i] = _error(f"{self.name}: onnxruntime failed: {e}")
                continue
            row = 0
            for i, rids, _ in group:
                n = rids.shape[0]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("logits", out[row:row + n])])
                row += n
        return responses

    def finalize(self):
        self.session = None
