"""The CPU tuner (kernels/cpu/tune.py): measured choice, the dense floor, the per-CPU JSON cache, the off switch."""

import json

import pytest
import torch

from lowbit.formats import IntFormat
from lowbit.kernels.cpu import tune
from lowbit.nn import QuantLinear

FMT = IntFormat(4, 64, False)


def layer(n=64, k=256):
    q = QuantLinear(k, n, False, FMT, device="cpu")
    q.load_quantized(FMT.encode(torch.randn(n, k)))
    return q


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    monkeypatch.setenv(tune.TUNE_ENV, "1")
    monkeypatch.delenv("LOWBIT_KERNEL", raising=False)
    tune._memory.clear()
    yield tmp_path
    tune._memory.clear()


def fake_timer(times: dict[str, float], calls: list):
    """A timer giving each candidate ('kernel/dtype') a fixed time; unknown ones are slow."""
    def timer(fn):
        calls.append(fn.label)
        return times.get(fn.label, 1e6)
    return timer


def test_decide_takes_the_fastest_and_never_one_slower_than_the_original():
    assert tune.decide({"cpu_dense/float32": 100.0, "cpu_gemv4/float32": 40.0, "cpu_int4/bfloat16": 50.0})[0] == \
        "cpu_gemv4/float32"
    label, why = tune.decide({"cpu_dense/float32": 100.0, "cpu_gemv4/float32": 140.0, "cpu_int4/bfloat16": 101.0})
    assert label == "cpu_dense/float32" and "no quantized kernel beat the original fp32 layer" in why


def test_the_layer_runs_the_measured_winner_and_the_choice_is_cached(tuning, monkeypatch):
    calls = []
    monkeypatch.setattr(tune, "time_calls", fake_timer({"cpu_dense/float32": 100.0, "cpu_int4/bfloat16": 30.0,
                                                       "cpu_gemv4/float32": 60.0}, calls))
    q = layer()
    q.prepare("auto")
    assert (q.kernel.name, q.compute_dtype) == ("cpu_int4", torch.bfloat16)
    assert q.kernel_reason.startswith("measured: fastest at M=1") and "3.33x the original" in q.kernel_reason
    assert calls and {"cpu_gemv4/float32", "cpu_int4/float32", "reference/bfloat16"} <= set(calls)
    saved = json.loads(tune.cache_path().read_text())
    (entry,) = saved["choices"].values()
    assert entry["choice"] == "cpu_int4/bfloat16" and entry["us"]["cpu_dense/float32"] == 100.0
    assert saved["cpu"]["isa"] in ("avx2", "avx512", "none")
    tune._memory.clear()  # a new process: read from the file, nothing timed
    calls.clear()
    q2 = layer()
    q2.prepare("auto")
    assert (q2.kernel.name, calls) == ("cpu_int4", [])


def test_slower_than_the_original_everywhere_gives_the_dense_floor(tuning, monkeypatch):
    monkeypatch.setattr(tune, "time_calls", fake_timer({"cpu_dense/float32": 10.0}, []))
    q = layer()
    q.prepare("auto")
    assert q.kernel.name == "cpu_dense" and "no quantized kernel beat" in q.kernel_reason
    x = torch.randn(2, 256)
    torch.testing.assert_close(q(x), x @ FMT.decode(q.canonical_tensors()).T)


def test_a_close_runner_up_races_the_original_again(tuning, monkeypatch):
    calls = []
    monkeypatch.setattr(tune, "time_calls", fake_timer({"cpu_dense/float32": 100.0, "cpu_gemv4/float32": 110.0,
                                                       "cpu_int4/bfloat16": 200.0}, calls))
    layer().prepare("auto")
    # first look + ROUNDS for every raced candidate, then ROUNDS more for the original and the runner-up only
    assert calls.count("cpu_gemv4/float32") == calls.count("cpu_dense/float32") == 1 + 2 * tune.ROUNDS
    assert calls.count("cpu_int4/bfloat16") == 1 + tune.ROUNDS


def test_off_switch_and_a_forced_kernel_measure_nothing(tuning, monkeypatch):
    calls = []
    monkeypatch.setattr(tune, "time_calls", fake_timer({}, calls))
    q = layer()
    q.prepare("auto", "reference")
    monkeypatch.setenv(tune.TUNE_ENV, "0")
    q2 = layer()
    q2.prepare(torch.float32)
    assert calls == [] and q.kernel.name == "reference" and not tune.cache_path().exists()
    assert q2.kernel.name in ("cpu_gemv4", "cpu_int4")  # static priority: the own GEMV where it can be built


def test_each_timed_call_reads_another_copy_of_the_weights():
    """A candidate cycles over copies of the layer that together exceed the last-level cache, as decoding does."""
    from lowbit.kernels import get_kernel, kernel_request
    request = kernel_request(FMT, (64, 256), "cpu", torch.float32)
    run = tune.Run("cpu_dense/float32", get_kernel("cpu_dense"), request, FMT.encode(torch.randn(64, 256)))
    tensors, prepared = run.sets[0]
    size = sum(t.nbytes for t in (*tensors.values(), *prepared.values()))
    with run:  # the copies exist while the candidate is timed
        assert len(run.sets) == min(tune.MAX_COPIES, -(-2 * tune.llc_bytes() // size)) > 1
        assert len({p["weight"].data_ptr() for _, p in run.sets}) == len(run.sets)
        outputs = [run() for _ in range(3)]
        assert run.turn == 3 % len(run.sets) and torch.equal(outputs[0], outputs[1])
        assert torch.equal(outputs[1], outputs[2])
    assert len(run.sets) == 1 and run.turn == 0
