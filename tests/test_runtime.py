"""The runtime's choices (layout, precision, compile) and the executor's shared logic.

The CUDA path cannot run here; what it shares with the CPU path (slots with a stream each,
the stream context around a task, the synchronize before a result is handed on) is driven
with fake streams.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from fedcifar.client.evaluate import eval_counts
from fedcifar.client.train import load_weights, read_weights, unwrap
from fedcifar.config import build_config
from fedcifar.federation import model_spec, partition_for
from fedcifar.runtime import Runtime, compile_pays, resolve_runtime, worker_layout
from fedcifar.server.backend import largest_first
from fedcifar.sim.executor import ModelPool
from fedcifar.sim.local import LocalBackend

CPU_BF16 = Runtime(torch.device("cpu"), torch.bfloat16, True, 2, 1)


@pytest.mark.parametrize(
    ("device", "cores", "k", "explicit", "expected"),
    [
        ("cpu", 2, 16, (0, 0), (2, 1)),  # two single-thread workers on two cores
        ("cpu", 2, 1, (0, 0), (1, 2)),  # one client per round: give it both cores
        ("cpu", 8, 4, (0, 0), (4, 2)),
        ("cpu", 2, 16, (1, 2), (1, 2)),  # explicit values win
        ("cuda", 2, 16, (0, 0), (2, 2)),  # two clients in flight on the GPU
        ("cuda", 16, 1, (0, 0), (1, 4)),
    ],
)
def test_worker_layout(device, cores, k, explicit, expected):
    assert worker_layout(device, cores, k, *explicit) == expected


def test_precision_flag_keeps_fp32_available():
    assert resolve_runtime(build_config("paper", None, {"precision": "fp32", "device": "cpu"})).amp_dtype is None
    assert (
        resolve_runtime(build_config("paper", None, {"precision": "bf16", "device": "cpu"})).amp_dtype is torch.bfloat16
    )


def test_compile_auto_needs_a_run_long_enough_for_each_cuda_worker_and_never_compiles_on_cpu():
    """auto compiles on CUDA once each worker trains enough images to repay the warm-up; on/off always win."""

    def pays(device: str, workers: int, **kw) -> bool:
        return compile_pays(build_config("paper", None, {"local_steps": 1, "batch_size": 10, **kw}), device, workers)

    # The first run length that pays with one worker (each round: 16 clients x 10 images).
    rounds = next(r for r in (2**i for i in range(40)) if pays("cuda", 1, rounds=r))
    assert rounds > 1 and not pays("cuda", 1, rounds=rounds // 2)  # a short run never repays it
    assert not pays("cuda", 2, rounds=rounds)  # two workers share the images: each compiles for half
    assert pays("cuda", 2, rounds=2 * rounds) and pays("cuda", 1, rounds=rounds // 2, batch_size=20)  # images count
    assert not pays("cpu", 1, rounds=1000 * rounds)  # on CPU, calibrate measures instead
    assert pays("cpu", 2, rounds=1, compile="on") and not pays("cuda", 1, rounds=1000 * rounds, compile="off")
    compiled = resolve_runtime(build_config("smoke", None, {"compile": "on", "device": "cpu"})).prepare(nn.Linear(2, 2))
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)  # what the run trains is compiled
    plain = resolve_runtime(build_config("smoke", None, {"compile": "off", "device": "cpu"})).prepare(nn.Linear(2, 2))
    assert isinstance(plain, nn.Linear)


def test_cpu_runtime_has_no_streams_and_prepares_channels_last():
    assert CPU_BF16.new_stream() is None
    with CPU_BF16.stream(None):
        pass
    model = CPU_BF16.prepare(nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


def test_weights_pass_through_a_compile_wrapper():
    plain = nn.Linear(4, 2)
    wrapped = torch.compile(plain)  # lazy: nothing is compiled until it is called
    assert unwrap(wrapped) is plain
    new = {k: torch.full_like(v, 0.5) for k, v in plain.state_dict().items()}
    load_weights(wrapped, new)
    assert set(read_weights(wrapped)) == {"weight", "bias"}
    assert torch.equal(plain.weight, new["weight"])


def test_largest_first_is_a_stable_permutation():
    assert largest_first([3, 9, 1, 9, 4]) == [1, 3, 4, 0, 2]
    assert largest_first([]) == []


class FakeStream:
    def __init__(self) -> None:
        self.synced = 0

    def synchronize(self) -> None:
        self.synced += 1


def test_pool_reuses_one_model_per_worker_and_keeps_submission_order():
    built = []

    def factory():
        built.append(nn.Linear(1, 1))
        return built[-1]

    def task(i):
        def run(model):
            time.sleep(0.01 * (5 - i % 5))  # finish out of order
            return i, id(model), threading.current_thread().name

        return run

    with ModelPool(factory, workers=3) as pool:
        results = list(pool.map(task(i) for i in range(12)))
    assert [r[0] for r in results] == list(range(12))
    assert len(built) == 3 and {r[1] for r in results} <= {id(m) for m in built}


def test_pool_runs_each_task_on_its_slots_stream_and_synchronizes():
    streams: list[FakeStream] = []
    entered: list[FakeStream] = []

    def new_stream():
        streams.append(FakeStream())
        return streams[-1]

    @contextmanager
    def on(stream):
        entered.append(stream)
        yield

    with ModelPool(lambda: nn.Linear(1, 1), 2, new_stream, on) as pool:
        assert list(pool.map((lambda m, i=i: i) for i in range(6))) == list(range(6))
        assert pool.borrow(lambda m: "ok") == "ok"
    assert len(streams) == 2 and set(map(id, entered)) <= set(map(id, streams))
    assert sum(s.synced for s in streams) == 7 == len(entered)


def test_the_local_backends_sharded_evaluation_equals_one_pass(cifar):
    cfg = build_config(
        "paper",
        None,
        dict(model="resnet20", workers=3, threads_per_worker=1, precision="fp32", eval_limit=203, eval_batch_size=50),
    )
    runtime = resolve_runtime(cfg)
    model = model_spec(cfg).build(seed=1)
    weights = read_weights(model)
    with LocalBackend(cfg, cifar, partition_for(cfg, cifar.train_y.numpy()), runtime) as backend:
        counts = backend.evaluate(weights)
    whole = eval_counts(model, weights, cifar.test_x[:203], cifar.test_y[:203], runtime, batch_size=203).scores()
    split = counts.scores()
    assert counts.n == 203 and sum(counts.class_total) == 203 and sum(counts.class_correct) == counts.top1
    assert split["acc"] == pytest.approx(whole["acc"]) and split["top5"] == pytest.approx(whole["top5"])
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_engine_rows_report_overhead_and_bookkeeping(tmp_path, cifar):
    from fedcifar.sim.engine import run_training

    cfg = build_config(
        "paper", None, dict(rounds=2, clients_per_round=3, local_steps=1, batch_size=16, eval_limit=64, workers=2)
    )
    rows = []
    run_training(cfg, tmp_path, cifar, progress=False, callbacks=(lambda _r, row: rows.append(dict(row)),))
    for row in rows:
        assert 0 <= row["overhead_seconds"] < row["round_seconds"]
        assert row["bookkeeping_seconds"] > 0
        assert len(row["clients"].split()) == 3
