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
