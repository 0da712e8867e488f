"""Triton Python-backend BLS model ``scorer``: essay TEXT in, SCORE / BLENDED / MEMBERS out.

For each request (one batch of essays): tokenize per member exactly like training (windows and
their ``window_weights`` for chunked members, ``aes_core.models.tokens.TokenEncoder`` with the
token cache), call the
member fold models (``<backbone>__<head>__f<fold>``) through BLS, average folds, add the GBDT
member in-process, then blend and threshold with ``EnsembleArtifact`` — the same library
code the in-process scorer uses. ``scorer.json`` next to this file names the members, their
tokenizer folders (copied into the repository) and where the ``aes_core`` package lives.
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


class TritonPythonModel:
    def initialize(self, args):
        here, meta = aes_paths.scorer_meta(args)
        from transformers import AutoTokenizer

        from aes_core.ensemble.artifact import EnsembleArtifact
        from aes_core.members import GBDT_MEMBER
        from aes_core.models import tokens
        from aes_core.models.regressor import RegressorSpec
        from aes_core.serving import onnx_scorer
        from aes_core.serving.base import decode_texts
        from aes_core.serving.stage_clock import StageClock, TritonStageMetrics
        from aes_core.serving.token_cache import CachedEncoder, TokenCache

        self.lib = onnx_scorer
        self.decode_texts = decode_texts
        self.tokens = tokens
        self.ensemble = EnsembleArtifact.load(os.path.join(here, meta["ensemble"]))
        self.clock = StageClock()  # served as metrics (aes_core.serving.stage_clock)
        self.metrics = TritonStageMetrics(pb_utils, args["model_name"],
                                          args.get("model_instance_name", ""))
        cache = TokenCache(int(meta.get("token_cache_size", 0)), meta.get("token_cache_dir"))
        cpt = float(meta.get("chars_per_token", 0.0))
        words = int(meta.get("word_cache", 0))
        self.members = []
        encoders = {}  # one tokenization per tokenizer + token plan (members of a backbone)
        for name in self.ensemble.members:
            if name == GBDT_MEMBER:
                from aes_core.ensemble.gbdt import GbdtMember

                gbdt = GbdtMember.load(os.path.join(here, meta["gbdt_dir"])).warm_up()
                self.members.append((name, gbdt, None, None))
                continue
            m = meta["members"][name]
            spec = RegressorSpec.model_validate(m["spec"])
            key = (m["tokenizer"], tokens.TokenPlan.of(spec))
            if key not in encoders:
                tok = AutoTokenizer.from_pretrained(os.path.join(here, m["tokenizer"]),
                                                    local_files_only=True)
                encoders[key] = CachedEncoder(tokens.TokenEncoder(tok, spec, cpt, words),
                                              cache)
            self.members.append((name, encoders[key], spec, list(m["models"])))

    def _fold_logits(self, model_name, batch):
        req = pb_utils.InferenceRequest(
            model_name=model_name, requested_output_names=["logits"],
            inputs=[pb_utils.Tensor(k, v) for k, v in batch.feeds().items()])
        resp = req.exec()
        if resp.has_error():
            raise ScoringError(f"member model {model_name}: {resp.error().message()}")
        return pb_utils.get_output_tensor_by_name(resp, "logits").as_numpy().reshape(-1)

    def _score(self, request):
        t = pb_utils.get_input_tensor_by_name(request, "TEXT")
        if t is None:
            raise ScoringError("input TEXT is required")
        try:
            texts = self.decode_texts(t.as_numpy())
        except ValueError as e:
            raise ScoringError(str(e)) from e
        preds = np.zeros((len(texts), len(self.members)), dtype=np.float64)
        batches = {}
        stage = self.clock.stage
        for j, (_name, tok, spec, models) in enumerate(self.members):
            if spec is None:  # GBDT member, in-process
                with stage("gbdt_wait"):
                    preds[:, j] = np.asarray(tok.predict(texts), dtype=np.float64).reshape(-1)
                continue
            if id(tok) not in batches:  # the member's CachedEncoder: ids as encode_batch
                with stage("tokenize"):
                    batches[id(tok)] = tok.batch(texts)
            batch = batches[id(tok)]
            with stage("device"):  # the member models (ONNX Runtime) through BLS
                preds[:, j] = self.lib.fold_average(
                    [self._fold_logits(m, batch) for m in models], spec.loss)
        with stage("blend"):
            blended = self.ensemble.blend(preds, texts)  # a stacker ensemble reads the texts
            scores = self.ensemble.to_scores(blended)
        self.metrics.publish(self.clock.take(), 1, len(texts))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("SCORE", scores.astype(np.int32).reshape(-1, 1)),
            pb_utils.Tensor("BLENDED", blended.astype(np.float64).reshape(-1, 1)),
            pb_utils.Tensor("MEMBERS", preds),
        ])

    def execute(self, requests):
        responses = []
        for request in requests:
            self.clock.take()  # a failed request's partial times are not counted
            try:
                responses.append(self._score(request))
            except ScoringError as e:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"scorer: {e}")))
            except Exception as e:  # noqa: BLE001 - never take the server down
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=pb_utils.TritonError(f"scorer: {type(e).__name__}: {e}")))
        return responses
