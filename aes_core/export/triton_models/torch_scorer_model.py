"""Triton Python-backend model ``scorer`` / ``student`` (serving.backend torch_gpu): TEXT in,
SCORE / BLENDED / MEMBERS out, every fold model in this process on one device.

``scorer.json`` next to this file lists the members' fold folders (regressor folders: weights,
spec, tokenizer), the GBDT folder and the ``TorchScorer`` options. Each instance runs on the
GPU Triton gives it (``instance_group`` KIND_GPU) or on the CPU (KIND_CPU, fp32). A request is
tokenized once per backbone and every fold model runs on that batch on the device
(``aes_core.serving.torch_scorer``); folds are averaged, members blended and thresholded with
``EnsembleArtifact``, the same library code as every other path. With ``merge_requests`` the
requests Triton batches together are scored as one length-sorted set.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aes_paths  # noqa: E402  (the project's paths first, before numpy: aes_paths.py)

# isort: split
import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class ScoringError(Exception):
    """A request could not be scored; the message goes back to the client."""


def _error(name, msg):
    return pb_utils.InferenceResponse(output_tensors=[],
                                      error=pb_utils.TritonError(f"{name}: {msg}"))


def _texts(request):
    from aes_core.serving.base import decode_texts  # the project is on the path by now

    t = pb_utils.get_input_tensor_by_name(request, "TEXT")
    if t is None:
        raise ScoringError("input TEXT is required")
    try:
        return decode_texts(t.as_numpy())
    except ValueError as e:
        raise ScoringError(str(e)) from e


class TritonPythonModel:
    def initialize(self, args):
        here, meta = aes_paths.scorer_meta(args)
        from aes_core.ensemble.artifact import EnsembleArtifact
        from aes_core.serving.token_cache import TokenCache
        from aes_core.serving.torch_scorer import TorchScorer

        self.name = args["model_name"]
        python = meta.get("python")
        if python and not os.path.basename(sys.executable or "").startswith("python"):
            import multiprocessing

            multiprocessing.set_executable(python)  # worker processes (GBDT) need Python
        opts = dict(meta.get("torch", {}))
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
        self.merge = bool(opts.pop("merge_requests", False))
        cache = TokenCache(int(opts.pop("token_cache_size", 0)), opts.pop("token_cache_dir", None))
        self.ensemble = EnsembleArtifact.load(os.path.join(here, meta["ensemble"]))
        members = {m: [os.path.join(here, f) for f in v["folds"]]
                   for m, v in meta["members"].items()}
        gbdt = os.path.join(here, meta["gbdt_dir"]) if meta.get("gbdt_dir") else None
        if gbdt or self.ensemble.method == "stacker":
            aes_paths.require_scipy()
        self.scorer = TorchScorer(self.ensemble, members, gbdt, device=device,
                                  token_cache=cache, **opts)
        from aes_core.serving.stage_clock import TritonStageMetrics

        self.metrics = TritonStageMetrics(pb_utils, self.name,
                                          args.get("model_instance_name", ""))

    def _response(self, preds, texts):
        blended = self.ensemble.blend(preds, texts)  # a stacker ensemble reads the texts
        scores = self.ensemble.to_scores(blended)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("SCORE", scores.astype(np.int32).reshape(-1, 1)),
            pb_utils.Tensor("BLENDED", blended.astype(np.float64).reshape(-1, 1)),
            pb_utils.Tensor("MEMBERS", np.ascontiguousarray(preds, dtype=np.float64)),
        ])

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []
        for i, request in enumerate(requests):
            try:
                good.append((i, _texts(request)))
            except ScoringError as e:
                responses[i] = _error(self.name, e)
        groups = [good] if (self.merge and len(good) > 1) else [[g] for g in good]
        for group in groups:
            texts = [t for _, ts in group for t in ts]
            try:
                preds = self.scorer.predict_request(texts)
            except Exception as e:  # noqa: BLE001 - never take the server down
                for i, _ in group:
                    responses[i] = _error(self.name, f"{type(e).__name__}: {e}")
                continue
            row = 0
            with self.scorer.clock.stage("blend"):
                for i, ts in group:
                    try:
                        responses[i] = self._response(preds[row:row + len(ts)], ts)
                    except Exception as e:  # noqa: BLE001 - never take the server down
                        responses[i] = _error(self.name, f"{type(e).__name__}: {e}")
                    row += len(ts)
            self.metrics.publish(self.scorer.clock.take(), len(group), len(texts))
        return responses

    def finalize(self):
        self.scorer.close()
