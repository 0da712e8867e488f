"""Run many independent jobs (fold x head partitions, exports) over worker slots.

A slot is one worker process pinned to one GPU (``CUDA_VISIBLE_DEVICES`` is set before the
worker imports torch, so inside it the GPU is ``cuda:0``) or to the CPU with a thread budget.
Workers start once and take job after job, so model libraries load once per worker; with
``start="forkserver"`` they are forked from one server process that imported the ``preload``
modules once (no CUDA is touched there, so each worker still picks its own GPU).
One ``in_process`` slot runs the jobs one after another in the caller's process (no start-up
cost; also where DDP must be launched from). A failing job does not stop the others: its
error comes back as a :class:`JobFailure`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aes_core.hardware import usable_cpus

POOL_FRAMES = ("/concurrent/futures/", "/multiprocessing/", f"/{Path(__file__).name}\"")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkerSlot:
    """Where one worker runs: a GPU index (None = CPU), its CPU threads, or in-process."""

    gpu: int | None = None
    threads: int | None = None
    in_process: bool = False
    cpus: tuple[int, ...] | None = None  # the CPUs the worker may run on (None = the caller's)

    def describe(self) -> str:
        if self.in_process:
            return "in-process"
        return f"cuda:{self.gpu}" if self.gpu is not None else f"cpu x{self.threads or 1}"


@dataclass
class JobFailure:
    """A job that raised: which one, and the worker's traceback."""

    index: int
    error: str

    @property
    def summary(self) -> str:
        """The error's last line and where it was raised (the innermost frame)."""
        return traceback_summary(self.error)


def out_of_memory_hint(failed: Sequence[JobFailure], backbone: str, sharing_a_gpu: int) -> str:
    """What to change when partitions ran out of GPU memory (a sentence), else ''."""
    if not any("OutOfMemoryError" in f.error or "CUDA out of memory" in f.error for f in failed):
        return ""
    return (f" GPU memory ran out with {sharing_a_gpu} partition(s) sharing a GPU: lower "
            f"backbones[{backbone}].workers_per_gpu (or gpu.workers_per_gpu), or this "
            f"backbone's train.batch_size.")


def traceback_summary(text: str) -> str:
    """A traceback's last line and the innermost frame that raised it, skipping the worker
    pool's own frames (a child process's traceback, quoted in the parent's, comes last)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    frames = [ln.strip() for ln in lines if ln.lstrip().startswith('File "')]
    job_frames = [f for f in frames if not any(m in f for m in POOL_FRAMES)]
    where = (job_frames or frames)[-1:]
    return f"{lines[-1]} ({where[0]})" if where else lines[-1]


def physical_gpu(index: int, env: dict[str, str] | None = None) -> str:
    """The device id a child process must see for this process's GPU ``index`` (CUDA numbers
    the devices in CUDA_VISIBLE_DEVICES from 0: index 0 of "2,3" is device 2)."""
    listed = (env if env is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
    if listed:
        ids = [x.strip() for x in listed.split(",") if x.strip()]
        if index < len(ids):
            return ids[index]
    return str(index)


def worker_gpu(index: int | None, logical: bool = False) -> str | None:
    """What a worker's ``CUDA_VISIBLE_DEVICES`` holds for this process's GPU ``index``."""
    if index is None:
        return None
    return str(index) if logical else physical_gpu(index)


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _init_worker(gpu: str | None, threads: int | None,
                 cpus: tuple[int, ...] | None = None) -> None:
    """Pin a fresh worker to its GPU, CPUs and thread budget. torch is not imported for it (a CPU
    worker that never needs torch would pay seconds for it): a later import reads the
    variables, and a torch already loaded by the spawn bootstrap is set directly."""
    if gpu is not None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            raise RuntimeError("a worker forked with CUDA already initialised cannot pick its "
                               "GPU: set gpu.worker_start: spawn")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if cpus:
        os.sched_setaffinity(0, cpus)
    if threads:
        for var in THREAD_VARS:
            os.environ[var] = str(threads)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)


def _call(fn: Callable[[T], R], job: T) -> R:
    return fn(job)


def run_jobs(fn: Callable[[T], R], jobs: Sequence[T], slots: Sequence[WorkerSlot],
             on_result: Callable[[int, R | JobFailure], None] | None = None,
             start: str = "spawn", preload: Sequence[str] = (),
             before_submit: Callable[[], None] | None = None,
             logical_gpus: bool = False) -> list[R | JobFailure]:
    """``fn(job)`` for every job over ``slots``; results in job order.

    ``fn`` and the jobs must pickle (a module-level function and plain data) unless the only
    slot is ``in_process``. ``on_result(index, result)`` is called in the caller's process as
    each job finishes (progress, logging, tracking), once the freed worker took its next job.
    ``start``: ``spawn``, ``forkserver`` (workers forked from a server that imported
    ``preload`` once) or ``fork``. ``before_submit``: the
    caller's own preparation, run once the forkserver is starting (its imports overlap it) and
    before the first job is handed out. Jobs start in order, each on the slot kind (GPU) with
    the most free workers, so consecutive jobs alternate between GPUs. ``logical_gpus``: a
    worker names its GPU by this process's index, not the physical one (under an MPS daemon
    started with this process's ``CUDA_VISIBLE_DEVICES``, which numbers those GPUs from 0).
    """
    results: list[R | JobFailure | None] = [None] * len(jobs)

    def done(i: int, r: R | JobFailure) -> None:
        results[i] = r
        if on_result is not None:
            on_result(i, r)

    if not slots:
        raise ValueError("run_jobs: no worker slots")
    if len(slots) == 1 and slots[0].in_process:
        if before_submit is not None:
            before_submit()
        for i, job in enumerate(jobs):
            try:
                r: R | JobFailure = fn(job)
            except Exception:  # noqa: BLE001 - reported per job
                r = JobFailure(i, traceback.format_exc())
            done(i, r)
        return results  # type: ignore[return-value]

    ctx = worker_context(start, preload)
    by_slot: dict[WorkerSlot, int] = {}
    for s in slots:
        by_slot[s] = by_slot.get(s, 0) + 1
    pools = {s: ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                    initargs=(worker_gpu(s.gpu, logical_gpus), s.threads,
                                              s.cpus))
             for s, n in by_slot.items()}
    free = dict(by_slot)
    pending = list(range(len(jobs)))
    running: dict[Future, tuple[int, WorkerSlot]] = {}
    try:
        if start == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()  # imports ``preload`` while before_submit runs here
        if before_submit is not None:
            before_submit()

        def refill() -> None:
            while pending:
                s = max((s for s in pools if free[s] > 0), key=lambda s: free[s], default=None)
                if s is None:
                    return
                i = pending.pop(0)
                running[pools[s].submit(_call, fn, jobs[i])] = (i, s)
                free[s] -= 1

        refill()
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            arrived: list[tuple[int, R | JobFailure]] = []
            for fut in finished:
                i, s = running.pop(fut)
                free[s] += 1
                try:
                    arrived.append((i, fut.result()))
                except Exception as e:  # noqa: BLE001 - the worker's error, or its death
                    arrived.append((i, JobFailure(i, "".join(traceback.format_exception(e)))))
            refill()  # freed workers take their next job before the callbacks run
            for i, r in arrived:
                done(i, r)
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
    return results  # type: ignore[return-value]


def worker_context(start: str, preload: Sequence[str] = ()) -> mp.context.BaseContext:
    """A multiprocessing context for worker pools; a forkserver imports ``preload`` once, and
    ``fork`` imports it here (a no-op where the run's executor preloaded it) so the forked
    workers hold it. Modules that touch CUDA at import must not be preloaded (forked workers
    inherit it), and a process that forks GPU workers must not have initialised CUDA."""
    if start not in ("spawn", "forkserver", "fork"):
        raise ValueError(f"worker start {start!r}: use spawn, forkserver or fork")
    ctx = mp.get_context(start)
    if start == "forkserver" and preload:
        ctx.set_forkserver_preload(list(preload))
    if start == "fork":
        import importlib

        for module in preload:
            importlib.import_module(module)
    return ctx


def cpu_blocks(n: int, cpus: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """This process's CPUs (or ``cpus``) in ``n`` contiguous blocks of (nearly) equal size."""
    ids = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if n < 1 or n > len(ids):
        raise ValueError(f"cannot split {len(ids)} CPU(s) into {n} block(s)")
    size, extra = divmod(len(ids), n)
    out, start = [], 0
    for b in range(n):
        end = start + size + (1 if b < extra else 0)
        out.append(tuple(ids[start:end]))
        start = end
    return out


def cpu_slots(workers: int, n_jobs: int) -> list[WorkerSlot]:
    """``workers`` CPU worker processes sharing the cores (one = in the caller's process)."""
    n = max(1, min(workers, n_jobs))
    if n == 1:
        return [WorkerSlot(in_process=True)]
    return [WorkerSlot(gpu=None, threads=max(1, usable_cpus() // n))] * n


def failures(results: Sequence[Any]) -> list[JobFailure]:
    return [r for r in results if isinstance(r, JobFailure)]


Mapper = Callable[[Callable[[T], R], Sequence[T]], list[R]]


@contextmanager
def process_map(workers: int) -> Iterator[Mapper]:
    """``map(fn, jobs)`` over ``workers`` spawned CPU processes that stay up for the whole
    block, so many small maps pay the start-up once; they are shut down on exit (a pool left
    alive would keep a Dagster step process from exiting). ``workers <= 1`` maps in this
    process. A failing job raises its error (with the worker's traceback as its cause)."""
    if workers <= 1:
        yield lambda fn, jobs: [fn(job) for job in jobs]
        return
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker,
                               initargs=(None, max(1, usable_cpus() // workers)))
    try:
        yield lambda fn, jobs: list(pool.map(fn, jobs))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
