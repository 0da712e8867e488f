"""Triton serving as a resource: score a bundle through a real Triton server.

``TritonResource.scorer()`` starts the bundled ``tritonserver`` (nvidia-pytriton) on the
generated repository for the duration of a step, or uses an already running server
(``serving.triton_url``); when neither works it falls back to in-process ONNX Runtime and
says why. The choice itself lives in ``aes_core.serving.loader.open_scorer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

from aes_core.config import ServingSection
from aes_core.serving.loader import ScorerChoice, open_scorer
from aes_core.serving.manifest import Bundle


class TritonResource(dg.ConfigurableResource):
    """``start_server``: start the bundled tritonserver per use when no URL is configured
    (a deployment with a shared server sets ``serving.triton_url`` instead)."""

    start_server: bool = True

    @contextlib.contextmanager
    def scorer(self, bundle: Bundle, serving: ServingSection, log=None,
               show_progress: bool = False) -> Iterator[ScorerChoice]:
        with open_scorer(bundle, serving, start_server=self.start_server,
                         show_progress=show_progress, logger=log) as choice:
            yield choice
