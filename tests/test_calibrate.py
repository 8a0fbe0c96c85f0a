"""precision=auto, compile=auto and eval_batch_size=0 on a CPU: measured once per machine and model, then cached."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fedcifar import calibrate
from fedcifar.calibrate import resolve_runtime
from fedcifar.config import build_config
from fedcifar.runtime import Runtime
from fedcifar.runtime import resolve_runtime as static_runtime

LONG = dict(model="resnet20", rounds=100, device="cpu", workers=2, threads_per_worker=1)  # paper-cpu's length


@pytest.fixture
def fake_measure(tmp_path, monkeypatch):
    """Replace the timing with a fixed verdict; record what was asked for."""
    monkeypatch.setenv("FEDCIFAR_CACHE_DIR", str(tmp_path))
    calls = []

    def measure(build, base, bf16_ok, try_compile, batch_size):
        calls.append((try_compile, base.workers, batch_size))
        rates = {"fp32": 500.0, "bf16": 400.0, **({"fp32 compiled": 600.0} if try_compile else {})}
        return calibrate.Choice(False, try_compile, rates, "measured")

    def measure_eval(build, runtime):
        calls.append(("eval", runtime.amp_dtype, runtime.workers))
        return 100, {"eval b100": 7000.0, "eval b250": 5500.0, "eval b1000": 5000.0}

    monkeypatch.setattr(calibrate, "measure", measure)
    monkeypatch.setattr(calibrate, "measure_eval", measure_eval)
    return calls


def train_calls(calls):
    return [c for c in calls if c[0] != "eval"]


def test_a_long_run_measures_once_then_reads_the_cache(tmp_path, fake_measure):
    cfg = build_config("paper", None, LONG)
    first = resolve_runtime(cfg)
    assert first.amp_dtype is None and first.compile  # the measured verdict, not the static bf16 rule
    assert "measured" in first.describe() and "fp32 compiled 600" in first.describe()
    second = resolve_runtime(cfg)
    assert (second.amp_dtype, second.compile) == (first.amp_dtype, first.compile) and "cached" in second.describe()
    # once each, with the run's workers and batch size; evaluation at the precision chosen (fp32)
    assert fake_measure == [(True, 2, 64), ("eval", None, 2)]
    assert first.eval_batch_size == second.eval_batch_size == 100 and "eval batch 100" in first.describe()
    train_key, eval_key = sorted(json.loads((tmp_path / "calibration.json").read_text()))
    assert "resnet20/batch b64" in train_key and "2x1" in train_key and calibrate.cpu_name() in train_key
    assert "resnet20/batch eval fp32" in eval_key and "2x1" in eval_key


def test_an_explicit_eval_batch_is_kept_and_short_runs_use_the_static_one(tmp_path, fake_measure):
    explicit = resolve_runtime(build_config("paper", None, {**LONG, "eval_batch_size": 500}))
    assert explicit.eval_batch_size == 500 and all(c[0] != "eval" for c in fake_measure)
    assert resolve_runtime(build_config("paper", None, {**LONG, "rounds": 2})).eval_batch_size == 250
    assert static_runtime(build_config("paper", None, LONG)).eval_batch_size == 250
    only_eval = resolve_runtime(build_config("paper", None, {**LONG, "precision": "bf16", "compile": "off"}))
    assert only_eval.eval_batch_size == 100 and fake_measure[-1] == ("eval", torch.bfloat16, 2)


def test_explicit_settings_short_runs_and_other_models_decide_as_they_should(tmp_path, fake_measure):
    explicit = resolve_runtime(build_config("paper", None, {**LONG, "precision": "bf16", "compile": "off"}))
    assert explicit.amp_dtype is torch.bfloat16 and not explicit.compile and train_calls(fake_measure) == []
    short = resolve_runtime(build_config("paper", None, {**LONG, "rounds": 2}))
    assert short.calibration == "" and len(fake_measure) == 1  # a short run keeps the static rule
    not_asked = static_runtime(build_config("paper", None, LONG))  # callers that only describe a run
    assert not_asked.calibration == "" and len(fake_measure) == 1
    medium = resolve_runtime(build_config("paper", None, {**LONG, "rounds": 20}))
    assert train_calls(fake_measure) == [(False, 2, 64)] and not medium.compile  # too short to try compiling
    resolve_runtime(build_config("paper", None, {**LONG, "rounds": 20, "model": "resnet18"}))
    assert len(train_calls(fake_measure)) == 2  # another model, another entry
    precision_only = resolve_runtime(build_config("paper", None, {**LONG, "compile": "off"}))
    assert not precision_only.compile and precision_only.amp_dtype is None


def test_a_cached_verdict_without_a_compiled_candidate_is_measured_again_for_a_longer_run(tmp_path, fake_measure):
    resolve_runtime(build_config("paper", None, {**LONG, "rounds": 20}))
    assert resolve_runtime(build_config("paper", None, LONG)).compile
    assert [c[0] for c in train_calls(fake_measure)] == [False, True]


def test_the_real_measurement_times_every_candidate_and_keeps_the_fastest():
    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 100))

    base = Runtime(torch.device("cpu"), None, False, 2, 1)
    choice = calibrate.measure(build, base, bf16_ok=True, try_compile=False, batch_size=8)
    assert set(choice.rates) == {"fp32", "bf16"} and all(r > 0 for r in choice.rates.values())
    assert choice.bf16 == (choice.rates["bf16"] > choice.rates["fp32"]) and not choice.compile


def test_the_real_evaluation_measurement_times_every_batch_and_keeps_the_fastest():
    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 100))

    best, rates = calibrate.measure_eval(build, Runtime(torch.device("cpu"), None, False, 2, 1))
    assert set(rates) == {f"eval b{b}" for b in calibrate.EVAL_BATCHES} and all(r > 0 for r in rates.values())
    assert rates[f"eval b{best}"] == max(rates.values())


def test_prepare_warms_a_compiled_model_up_once_per_model(monkeypatch):
    calls = []

    class Counting(nn.Linear):
        def forward(self, x):
            calls.append(self.training)
            return super().forward(x.flatten(1))

    monkeypatch.setattr(torch, "compile", lambda model: model)  # the warm-up, not the compiler, is tested
    runtime = Runtime(torch.device("cpu"), None, False, 2, 1, compile=True)
    models = [runtime.prepare(Counting(3 * 32 * 32, 10), batch_size=4) for _ in range(2)]
    assert calls == [True, True]  # one training step each, at prepare time
    assert all(p.grad is None for m in models for p in m.parameters())
    runtime.prepare(Counting(3 * 32 * 32, 10))  # no batch size: nothing runs
    assert len(calls) == 2
