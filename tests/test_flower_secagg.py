"""Secure aggregation (SecAgg+ through Flower's workflow and client mod) on a real loopback federation.

A SuperLink and 3 SuperNodes with TLS and SuperNode authentication, each node holding one
client's shard, every client in every round. The ServerApp logs what each reply it pulls holds
(``FEDCIFAR_SECAGG_RECEIVED``), so the tests see what a server operator sees.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import fedcifar.flower
from fedcifar.calibrate import resolve_runtime as calibrated_runtime
from fedcifar.client.train import read_weights
from fedcifar.config import build_config
from fedcifar.data.shards import export_shards
from fedcifar.federation import client_instructions, model_spec, partition_for
from fedcifar.flower.deploy import Federation
from fedcifar.flower.secagg import QUANTISATION_LEVELS, RECEIVED_ENV, STALL_KEY, quantisation_bound
from fedcifar.model.spec import is_statistic
from fedcifar.server.backend import FitTask
from fedcifar.sim.engine import run_training
from fedcifar.sim.local import LocalBackend
from fedcifar.strategy.aggregate import WeightedMean

APP = Path(fedcifar.flower.__file__).parent / "app"
TINY = {
    "num_clients": 3,
    "clients_per_round": 3,
    "local_steps": 3,
    "batch_size": 16,
    "eval_limit": 500,
    "eval_batch_size": 250,
    "rounds": 1,
}


def _cfg(**extra):
    return build_config("paper-cpu", None, {**TINY, **extra})


def _up(work: Path, cifar, stall: Path | None = None) -> Federation:
    shards = work / "shards"
    export_shards(cifar.train_x, cifar.train_y, partition_for(_cfg(), cifar.train_y.numpy()), shards)

    def node_config(i: int) -> str:
        extra = f' {STALL_KEY}="{stall}"' if stall is not None and i == 2 else ""
        return f'partition-id={i} data-path="{shards}"{extra}'

    env = {RECEIVED_ENV: str(work / "received.jsonl")}
    return Federation.up(work, 3, node_config=node_config, poll_interval=0.2, timeout=90, clientapp="warm", app_env=env)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, cifar):
    fed = _up(tmp_path_factory.mktemp("secagg"), cifar)
    yield fed
    fed.down()


def _submit(fed: Federation, out: Path, **extra) -> pd.DataFrame:
    overrides = " ".join(f"{k}={v}" for k, v in {**TINY, **extra}.items())
    config = {"preset": "paper-cpu", "overrides": overrides, "out": str(out)}
    config["data-dir"] = os.environ.get("FEDCIFAR_DATA_DIR", "")
    fed.submit(APP, config, timeout=600)
    return pd.read_csv(out / "metrics.csv")


def _received(fed: Federation) -> list[dict]:
    path = Path(fed.workdir) / "received.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.unlink()
    return lines


def _float_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], statistics: bool = False) -> float:
    """The largest difference over the trained float tensors (or over the BatchNorm statistics)."""
    keys = [k for k in a if a[k].is_floating_point() and is_statistic(k) == statistics]
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in keys), default=0.0)


def test_secure_fedavg_equals_the_plain_aggregate_within_the_quantisation_bound(federation, tmp_path, cifar):
    # Uniform weights: every r_i = 1, so the bound is purely the quantisation's, n * 2c / 2^22 / n.
    # norm=bn: the BatchNorm running variances travel as deltas, well inside c = 8.
    extra = dict(secure_aggregation=True, client_weighting="uniform")
    frame = _submit(federation, tmp_path / "secure", **extra)
    local = run_training(_cfg(client_weighting="uniform"), tmp_path / "plain", cifar, progress=False)
    assert frame["clients_failed"].eq(0).all() and frame["secagg_clipped"].eq(0).all()
    assert sorted(frame["clients"].iloc[0].split()) == ["0", "1", "2"]
    assert frame["train_loss"].tolist() == local["train_loss"].tolist()  # the same updates, metrics in the clear
    for stage in ("keys", "shares", "masking", "unmasking"):
        assert frame[f"secagg_{stage}_seconds"].iloc[0] > 0
    secure = load_file(tmp_path / "secure" / "model_global.safetensors")
    plain = load_file(tmp_path / "plain" / "model_global.safetensors")
    bound = quantisation_bound(_cfg(), [1.0, 1.0, 1.0])
    assert bound == pytest.approx(2 * 8.0 / QUANTISATION_LEVELS)
    diff = _float_diff(secure, plain)
    assert 0 < diff <= bound + 1e-6  # masks and quantisation really ran; + float32 rounding of w + mean
    # Running statistics travel divided by 64, so their bound is 64 times larger.
    assert 0 < _float_diff(secure, plain, statistics=True) <= quantisation_bound(_cfg(), [1.0] * 3, True) + 1e-5
    for k, v in plain.items():  # counters are not aggregated: they keep the global (initial) values
        if not v.is_floating_point():
            assert torch.equal(secure[k], read_weights(model_spec(_cfg()).build(seed=_cfg().seed))[k])

    # What the ServerApp received: no float array at any stage, masked vectors of uniform integers.
    replies = _received(federation)
    assert len(replies) == 4 * 3  # 4 protocol stages x 3 clients
    assert all(not r["error"] and r["float_elements"] == 0 for r in replies)
    masked = [r["masked"] for r in replies if "masked" in r]
    assert len(masked) == 3
    for m in masked:
        sample = np.array(m["sample"], dtype=np.float64) / 2**32
        # A quantised update without its masks would sit near 2^21 / 2^32 = 0.0005 of the modulus.
        assert m["dtype"] in ("int64", "uint64") and 0.3 < sample.mean() < 0.7 and sample.max() > 0.9


def test_distributed_dp_clips_and_noises_on_the_clients_before_masking(federation, tmp_path, cifar):
    # dp=client, dp_noise=client: each node clips its update, adds its share of the noise, and only
    # then masks it; nobody sees a non-noised update, the server not even a noised one alone.
    extra = dict(dp="client", dp_noise="client", norm="group", client_weighting="uniform", dp_clip=0.5, dp_seed=4)
    frame = _submit(federation, tmp_path / "secure", secure_aggregation=True, **extra)
    local = run_training(_cfg(**extra), tmp_path / "plain", cifar, progress=False)
    assert frame["dp_epsilon"].tolist() == local["dp_epsilon"].tolist() and frame["dp_epsilon"].gt(0).all()
    assert frame["dp_noise_std"].tolist() == pytest.approx([1.0 * 0.5 / 3])
    secure = load_file(tmp_path / "secure" / "model_global.safetensors")
    plain = load_file(tmp_path / "plain" / "model_global.safetensors")
    # The same seeded noise on both sides; the sum of 3 noised updates over m = 3: the bound as above.
    assert _float_diff(secure, plain) <= quantisation_bound(_cfg(), [1.0] * 3) + 1e-6
    _received(federation)


def test_a_node_killed_after_sharing_its_keys_is_recovered_and_the_survivors_are_aggregated(tmp_path, cifar):
    stall = tmp_path / "stalled"
    fed = _up(tmp_path / "fed", cifar, stall=stall)
    try:
        out = tmp_path / "secure"
        extra = dict(secure_aggregation=True, round_timeout=45, min_fit_clients=2)
        run = threading.Thread(target=_submit, args=(fed, out), kwargs=extra)
        run.start()
        deadline = time.monotonic() + 300
        while not stall.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stall.exists(), "client 2 never reached the masking stage"
        os.kill(fed.nodes[2].pid, signal.SIGKILL)  # its SuperNode, with its keys shared, nothing masked
        os.kill(int(stall.read_text()), signal.SIGKILL)  # and the ClientApp process it had started
        run.join(timeout=400)
        assert not run.is_alive()
    finally:
        fed.down()
    frame = pd.read_csv(out / "metrics.csv")
    assert sorted(frame["clients"].iloc[0].split()) == ["0", "1"]
    assert frame["clients_failed"].iloc[0] == 1 and "2: dropped out of secure aggregation" in frame["failures"].iloc[0]
    assert not isinstance(frame["skipped"].iloc[0], str)  # the round completed

    # The survivors' plain size-weighted mean, from their updates trained here.
    cfg = _cfg(**{**extra, "secure_aggregation": False})
    parts = partition_for(cfg, cifar.train_y.numpy())
    runtime = calibrated_runtime(cfg)  # as run_training takes it: the updates the nodes computed
    runtime.apply_global_settings()
    start = read_weights(model_spec(cfg).build(seed=cfg.seed))
    tasks = [FitTask(c, client_instructions(cfg, 1, c, {})) for c in (0, 1)]
    mean, sizes = WeightedMean(), {}
    with LocalBackend(cfg, cifar, parts, runtime) as backend:
        for result in backend.fit(1, start, tasks):
            mean.add(result.weights, float(result.num_examples))
            sizes[result.client_id] = result.num_examples
    plain = mean.result(like=start)
    top = max(sizes.values())
    secure = load_file(out / "model_global.safetensors")
    weights = [n / top for n in sizes.values()]
    assert _float_diff(secure, plain) <= quantisation_bound(cfg, weights) + 1e-5  # + the weights' 2^-21 rounding
    assert _float_diff(secure, plain, statistics=True) <= quantisation_bound(cfg, weights, statistic=True) + 1e-4
