"""A quiet, useful console for pipeline runs: one line per step and per asset message.

Dagster's own console logger prints every event at DEBUG; at INFO it prints only the assets'
messages, so a long run shows no sign of life between them. This logger prints the steps as
they start and finish with "k of N", the elapsed time and a naive estimate of the time left,
the assets' INFO messages, and warnings and errors in full. ``--verbose`` adds Dagster's own
console logger at DEBUG.
"""

from __future__ import annotations

import logging
import sys
import time

import dagster as dg

STARTED, DONE, FAILED = "STEP_START", "STEP_SUCCESS", "STEP_FAILURE"


class ProgressHandler(logging.Handler):
    def __init__(self, total_steps: int, stream=None):
        super().__init__(logging.NOTSET)  # step events arrive at DEBUG
        self.total, self.done, self.t0 = max(total_steps, 1), 0, time.time()
        self.started: dict[str, float] = {}
        self.stream = stream or sys.stderr

    def _clock(self) -> str:
        elapsed = time.time() - self.t0
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        return f"{elapsed / 60:.1f} min" + (f", ~{left / 60:.1f} min left" if left else "")

    def line(self, record: logging.LogRecord) -> str | None:
        meta = getattr(record, "dagster_meta", None) or {}
        event, step = meta.get("dagster_event"), meta.get("step_key") or ""
        if event is None:
            if record.levelno < logging.INFO:
                return None
            level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
            return f"[aes]   {step}: {level}{meta.get('orig_message', record.getMessage())}"
        kind = event.event_type_value
        if kind == STARTED:
            self.started[step] = time.time()
            return f"[aes] > {step}"
        if kind == DONE:
            self.done += 1
            took = time.time() - self.started.pop(step, time.time())
            return (f"[aes] ok {step} in {took:.0f}s ({self.done} of ~{self.total} steps, "
                    f"{self._clock()})")
        if kind == FAILED:
            self.done += 1
            error = getattr(event.event_specific_data, "error", None)
            return f"[aes] FAILED {step}: {error.message.strip() if error else ''}"
        return None

    def emit(self, record: logging.LogRecord) -> None:
        text = self.line(record)
        if text:
            self.stream.write(text + "\n")
            self.stream.flush()


@dg.logger(config_schema={"total_steps": dg.Field(int, default_value=1)},
           description="One line per step (k of N, elapsed, time left) and per asset message.")
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("aes_progress", level=logging.DEBUG)
    logger.addHandler(ProgressHandler(init_context.logger_config["total_steps"]))
    return logger
