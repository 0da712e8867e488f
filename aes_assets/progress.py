"""A quiet, useful console for pipeline runs.

Dagster's own console logger prints every event at DEBUG; at INFO it prints only the assets'
messages, so a long run shows no sign of life between them. Two pieces replace it:

* ``progress_logger`` prints the assets' INFO messages and every warning and error, in
  whichever process a step runs;
* :class:`StepProgress` (started by the driver) follows the run's events in the instance and
  prints each step as it starts and ends, with "k of N", the elapsed time and an estimate of
  the time left — correct with the multiprocess executor too, since it reads the event log.

``--verbose`` adds Dagster's own console logger at DEBUG.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import dagster as dg

STARTED, DONE, FAILED = "STEP_START", "STEP_SUCCESS", "STEP_FAILURE"


def failure_reason(event: dg.DagsterEvent) -> str:
    """A failed step's exception message (its last line) and the frame that raised it."""
    from aes_core.training.parallel import traceback_summary

    error = getattr(event.event_specific_data, "error", None)
    if error is None:
        return "no error recorded (see the run in the UI)"
    cause = error
    while getattr(cause, "cause", None) is not None:  # the user code's own exception
        cause = cause.cause
    if not cause.message:
        return error.message.strip()
    # the stack first, then the message: a spawned process's traceback is quoted in it
    return traceback_summary("".join(cause.stack) + "\n" + cause.message)


class MessageHandler(logging.Handler):
    """The assets' own messages (no Dagster events), one line each."""

    def __init__(self, stream=None):
        super().__init__(logging.INFO)
        self.stream = stream or sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        if meta.get("dagster_event") is not None:
            return
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        step = meta.get("step_key") or ""
        self.stream.write(f"[aes]   {step}: {level}"
                          f"{meta.get('orig_message', record.getMessage())}\n")
        self.stream.flush()


@dg.logger(description="The assets' INFO messages, warnings and errors, one line each.")
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("aes_progress", level=logging.INFO)
    logger.addHandler(MessageHandler())
    return logger


class StepProgress(threading.Thread):
    """Print a run's steps as they start and end, read from the instance every ``every`` s."""

    def __init__(self, instance: dg.DagsterInstance, tag: tuple[str, str], total_steps: int,
                 every: float = 2.0, out=None, history: dict[str, float] | None = None):
        super().__init__(daemon=True)
        self.instance, self.tag, self.total = instance, tag, max(total_steps, 1)
        self.every, self.out = every, out or sys.stderr
        self.stopped = threading.Event()
        self.done, self.t0, self.started = 0, time.time(), {}
        self.history, self.finished = history or {}, set()

    def _run_id(self) -> str | None:
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={self.tag[0]: self.tag[1]}),
                                      limit=1)
        return runs[0].run_id if runs else None

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _clock(self) -> str:
        """Elapsed, and the time left: from the same steps' durations in the last run when
        there is one (steps differ a lot in length), else from the average step so far."""
        elapsed = time.time() - self.t0
        if self.history:
            left = sum(v for k, v in self.history.items() if k not in self.finished)
        else:
            left = elapsed / self.done * (self.total - self.done) if self.done else None
        return f"{elapsed / 60:.1f} min" + (f", ~{left / 60:.1f} min left" if left else "")

    def _handle(self, entry) -> None:
        ev = entry.dagster_event
        if ev is None:
            return
        step, kind = ev.step_key, ev.event_type_value
        if kind == STARTED:
            self.started[step] = entry.timestamp
            self._say(f"[aes] > {step}")
        elif kind in (DONE, FAILED):
            self.done += 1
            self.finished.add(step)
            took = entry.timestamp - self.started.pop(step, entry.timestamp)
            word = "ok" if kind == DONE else "FAILED"
            self._say(f"[aes] {word} {step} in {took:.0f}s ({self.done} of {self.total} steps, "
                      f"{self._clock()})")
            if kind == FAILED:
                self._say(f"[aes]   why: {failure_reason(ev)}")

    def poll(self, run_id: str, cursor: str | None) -> str | None:
        records = self.instance.get_records_for_run(run_id, cursor=cursor, of_type={
            dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE})
        for rec in records.records:
            self._handle(rec.event_log_entry)
        return records.cursor if records.records else cursor

    def run(self) -> None:
        run_id, cursor = None, None
        while True:
            stopping = self.stopped.wait(self.every)
            try:
                run_id = run_id or self._run_id()
                if run_id:
                    cursor = self.poll(run_id, cursor)
            except Exception as e:  # noqa: BLE001 - progress must never break a run
                self._say(f"[aes] (progress unavailable: {type(e).__name__}: {e})")
                return
            if stopping:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


def last_step_durations(instance: dg.DagsterInstance, job: str,
                        tags: dict[str, str]) -> dict[str, float]:
    """Step durations (s) of the last successful run of ``job`` with ``tags`` ({} if none)."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job, tags=tags,
                                                   statuses=[dg.DagsterRunStatus.SUCCESS]),
                             limit=1)
    if not runs:
        return {}
    return {s.step_key: s.end_time - s.start_time
            for s in instance.get_run_step_stats(runs[0].run_id)
            if s.start_time and s.end_time}
