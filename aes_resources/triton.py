"""A real Triton server as a Dagster resource: start on a generated repository, hand out clients."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

from aes_core.serving.triton import TritonError, TritonServer, server_ready


class TritonResource(dg.ConfigurableResource):
    """Starts ``tritonserver`` (the nvidia-pytriton binary by default) on ``repo`` per use.

    ``url`` set: use that already running server instead of starting one.
    """

    repo: str = ""
    url: str | None = None
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    startup_timeout_s: float = 120.0
    binary: str | None = None

    @contextlib.contextmanager
    def serve(self, repo: str | None = None, log=None) -> Iterator[TritonServer | str]:
        """Yield a started :class:`TritonServer` (stopped on exit), or ``url`` if external.

        ``server.client()`` returns a ``tritonclient.http.InferenceServerClient``; clients
        are closed before the server stops.
        """
        if self.url:
            if not server_ready(self.url):
                raise TritonError(f"no Triton server answers at {self.url}")
            yield self.url
            return
        server = TritonServer(repo or self.repo, http_port=self.http_port,
                              grpc_port=self.grpc_port, metrics_port=self.metrics_port,
                              startup_timeout_s=self.startup_timeout_s, binary=self.binary)
        server.start()
        if log is not None:
            log.info(f"tritonserver ready at {server.url} on {server.repo}")
        try:
            yield server
        finally:
            server.stop()

    def client(self, url: str):
        """A ``tritonclient.http`` client for ``url`` (caller closes it)."""
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(url, network_timeout=300.0)
