"""Stage timings of a scorer and the Prometheus text they are served as."""

import time

import pytest

from aes_core.serving.stage_clock import StageClock, parse_prometheus, stage_breakdown


def test_clock_accumulates_and_take_forgets():
    clock = StageClock()
    with clock.stage("device"):
        time.sleep(0.02)
    with clock.stage("device"):
        time.sleep(0.01)
    clock.add("blend", 0.5)
    got = clock.take()
    assert got["device"] == pytest.approx(0.03, abs=0.02) and got["blend"] == 0.5
    assert clock.take() == {}


def test_a_stage_that_raises_is_still_timed():
    clock = StageClock()
    with pytest.raises(ValueError), clock.stage("tokenize"):
        raise ValueError("bad essay")
    assert "tokenize" in clock.take()


def _text(stage_s: float, requests: int, triton_us: int, served: int) -> str:
    return f"""# HELP aes_scorer_stage_seconds seconds the scorer spent per stage
# TYPE aes_scorer_stage_seconds counter
aes_scorer_stage_seconds{{instance="scorer_0",model="scorer",stage="device"}} {stage_s}
aes_scorer_stage_seconds{{instance="scorer_1",model="scorer",stage="device"}} {stage_s}
aes_scorer_stage_seconds{{instance="student_0",model="student",stage="device"}} 99
aes_scorer_requests{{instance="scorer_0",model="scorer"}} {requests}
aes_scorer_requests{{instance="scorer_1",model="scorer"}} {requests}
aes_scorer_essays{{instance="scorer_0",model="scorer"}} {requests * 64}
aes_scorer_essays{{instance="scorer_1",model="scorer"}} {requests * 64}
nv_inference_queue_duration_us{{model="scorer",version="1"}} {triton_us}
nv_inference_request_success{{model="scorer",version="1"}} {served}
"""


def test_breakdown_between_two_scrapes_sums_instances_of_one_model():
    before = parse_prometheus(_text(1.0, 10, 1000, 20))
    after = parse_prometheus(_text(2.0, 20, 41000, 40))
    got = stage_breakdown(before, after, "scorer")
    # 2 instances x 1 s over 20 new requests; the student's counter is not ours
    assert got == {"requests": 20, "essays": 1280, "device_ms_per_request": 100.0,
                   "triton_queue_ms_per_request": 2.0,
                   "triton_compute_input_ms_per_request": 0.0,
                   "triton_compute_infer_ms_per_request": 0.0,
                   "triton_compute_output_ms_per_request": 0.0,
                   "triton_request_ms_per_request": 0.0}


def test_breakdown_without_requests_has_only_counts():
    same = parse_prometheus(_text(1.0, 10, 1000, 20))
    assert stage_breakdown(same, same, "scorer") == {"requests": 0, "essays": 0}
    assert stage_breakdown({}, {}, "nothing") == {"requests": 0, "essays": 0}


def test_parser_skips_comments_and_unparsable_values():
    got = parse_prometheus('# TYPE x counter\nx{a="1"} 3\ny NaN-ish\nz 4e3\n')
    assert got == {("x", frozenset({("a", "1")})): 3.0, ("z", frozenset()): 4000.0}
