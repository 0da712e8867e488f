"""Worker pools of a step: results in job order, failures kept per job and said clearly."""

from aes_core.training.parallel import WorkerSlot, cpu_slots, failures, run_jobs


def half(x: int) -> float:
    if x == 3:
        raise ValueError(f"job {x} has no half")
    return x / 2


def test_failures_name_the_error_and_where_it_was_raised():
    for slots in ([WorkerSlot(in_process=True)], cpu_slots(2, 4)):
        results = run_jobs(half, [1, 2, 3, 4], slots)
        assert results[0] == 0.5 and results[3] == 2.0  # the others finish, in order
        [f] = failures(results)
        assert f.index == 2
        assert f.summary.startswith("ValueError: job 3 has no half (File ")
        assert "test_parallel.py" in f.summary and "in half" in f.summary


def test_a_failed_step_says_why_and_where_in_the_run_log():
    """The CLI's one-line reason for a failed Dagster step names the raising frame, also for
    an error raised in a spawned process (DDP ranks) and quoted in the step's exception."""
    import dagster as dg

    from aes_assets.progress import failure_reason

    @dg.asset
    def halves() -> list[float]:
        return [half(x) for x in (1, 3)]

    @dg.asset
    def spawned() -> None:
        [f] = failures(run_jobs(half, [3], cpu_slots(1, 1)))
        raise RuntimeError(f"a rank failed:\n{f.error}")

    for asset, frame in ((halves, "in half"), (spawned, "in half")):
        result = dg.materialize([asset], raise_on_error=False)
        [event] = [e for e in result.all_events if e.is_step_failure]
        why = failure_reason(event)
        assert "job 3 has no half" in why and "test_parallel.py" in why and frame in why, why


def modules_loaded(names: tuple[str, ...]) -> list[bool]:
    import sys

    return [n in sys.modules for n in names]


def test_forkserver_workers_start_with_the_preloaded_modules():
    preload = ("aes_core.metrics",)
    results = run_jobs(modules_loaded, [preload, preload], cpu_slots(2, 2),
                       start="forkserver", preload=preload)
    assert results == [[True], [True]]
    [f] = failures(run_jobs(half, [3], cpu_slots(2, 2), start="forkserver"))
    assert f.summary.startswith("ValueError: job 3 has no half (File ")
    spawned = run_jobs(modules_loaded, [preload, preload], cpu_slots(2, 2), start="spawn")
    assert spawned == [[False], [False]]


def test_forked_workers_hold_what_the_step_imported():
    """``fork``: the preload modules are imported in the caller (a no-op where the run's
    executor preloaded them), and every worker forked from it holds them."""
    preload = ("aes_core.ensemble",)
    results = run_jobs(modules_loaded, [preload, preload], cpu_slots(2, 2), start="fork",
                       preload=preload)
    assert results == [[True], [True]]
    [f] = failures(run_jobs(half, [3], cpu_slots(2, 2), start="fork"))
    assert f.summary.startswith("ValueError: job 3 has no half (File ")


def visible_gpu_and_marker(marker: str) -> tuple[str | None, bool]:
    import os
    from pathlib import Path

    return os.environ.get("CUDA_VISIBLE_DEVICES"), Path(marker).exists()


def test_jobs_alternate_between_gpus_after_the_callers_preparation(tmp_path):
    """Consecutive jobs go to alternating GPUs (the pinned worker sees only its own), and
    ``before_submit`` has finished before any job starts (it overlaps the forkserver start)."""
    marker = tmp_path / "prepared"
    slots = [WorkerSlot(gpu=g, threads=1) for _ in range(2) for g in (0, 1)]
    results = run_jobs(visible_gpu_and_marker, [str(marker)] * 4, slots, start="forkserver",
                       before_submit=marker.touch)
    assert results == [("0", True), ("1", True), ("0", True), ("1", True)]
    marker.unlink()
    in_process = run_jobs(visible_gpu_and_marker, [str(marker)], [WorkerSlot(in_process=True)],
                          before_submit=marker.touch)
    assert in_process[0][1] is True


def touch(marker: str) -> str:
    from pathlib import Path

    Path(marker).touch()
    return marker


def test_a_freed_worker_takes_its_next_job_before_the_callback_runs(tmp_path):
    """Slow result handling in the caller (tracking, metadata) never keeps a worker idle: the
    next job is handed out first, so it runs while the callback for the last one works."""
    import time

    jobs = [str(tmp_path / "first"), str(tmp_path / "second")]
    seen: dict[int, bool] = {}

    def on_result(i: int, _r) -> None:
        if i == 0:  # wait for the second job to start, as a slow callback would
            deadline = time.time() + 10
            while not (tmp_path / "second").exists() and time.time() < deadline:
                time.sleep(0.05)
            seen[i] = (tmp_path / "second").exists()

    results = run_jobs(touch, jobs, [WorkerSlot(gpu=None, threads=1)], on_result)
    assert results == jobs and seen == {0: True}


def affinity(_: int) -> list[int]:
    import os

    return sorted(os.sched_getaffinity(0))


def test_a_worker_runs_on_the_cpus_of_its_slot():
    import os

    first = min(os.sched_getaffinity(0))
    [pinned, free] = run_jobs(affinity, [0, 1], [WorkerSlot(threads=1, cpus=(first,)),
                                                 WorkerSlot(threads=1)])
    assert pinned == [first]
    assert free == sorted(os.sched_getaffinity(0))
