"""fedcifar bench: the shared workload, the probes, the memory sampler, the report, and a tiny
end-to-end run of fedcifar against the paper-style pipeline (real CIFAR-100, 1-2 steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from fedcifar.bench.impl import engine_config
from fedcifar.bench.memory import TreeSampler, memory_kb, process_tree
from fedcifar.bench.probes import peak_matmul, training_flops_per_image
from fedcifar.bench.report import markdown, summarize
from fedcifar.bench.run import BenchOptions, run_bench, run_child
from fedcifar.bench.workload import Workload, measured
from fedcifar.federation import partition_for
from fedcifar.model.resnet import build_model
from fedcifar.runtime import Runtime
from fedcifar.strategy.selection import uniform


def test_workload_is_the_engines_partition_and_selection():
    w = Workload(rounds=3, clients_per_round=5)
    cfg = engine_config(w)
    labels = np.repeat(np.arange(100), 500)
    assert all(np.array_equal(a, b) for a, b in zip(w.partition(labels), partition_for(cfg, labels), strict=True))
    assert cfg.client_selection == "uniform"  # the engine's default draws with selection.uniform
    assert w.schedule() == [uniform(cfg.num_clients, cfg.clients_per_round, cfg.seed, r) for r in (1, 2, 3)]


def test_workload_round_trips_through_json(tmp_path):
    w = Workload(rounds=2, local_steps=3, data_dir="/x")
    w.save(tmp_path / "w.json")
    assert Workload.load(tmp_path / "w.json") == w
    assert len(json.loads((tmp_path / "w.json").read_text())["schedule"]) == 2


@pytest.mark.parametrize(("steps", "n", "expected"), [(0, 100, 200), (1, 100, 64), (2, 100, 100), (3, 100, 164)])
def test_client_images_follows_epochs_or_steps(steps, n, expected):
    assert Workload(local_epochs=2, local_steps=steps, batch_size=64).client_images(n) == expected


def test_measured_drops_the_warmup_round_only_when_others_remain():
    assert measured([5.0, 1.0, 2.0]) == [1.0, 2.0]
    assert measured([5.0]) == [5.0]


def test_resnet18_training_costs_about_3_33_gflops_per_image():
    runtime = Runtime(torch.device("cpu"), torch.bfloat16, True, 1, 1)
    flops = training_flops_per_image(build_model(), runtime, batch_size=2)
    assert flops == pytest.approx(3.33e9, rel=0.02)


def test_flop_counter_matches_a_linear_layer_by_hand():
    fp32 = Runtime(torch.device("cpu"), None, False, 1, 1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 100))
    # forward 2*in*out; backward computes only the weight gradient (the input needs none): 2*in*out
    assert training_flops_per_image(model, fp32, batch_size=4) == 4 * 3 * 32 * 32 * 100


def test_peak_matmul_reports_every_size_in_the_given_layout():
    peak = peak_matmul(torch.float32, workers=2, threads=1, sizes=(64, 128), seconds=0.02)
    assert set(peak.by_size) == {64, 128} and peak.flops_per_sec == max(peak.by_size.values()) > 0
    assert (peak.dtype, peak.workers, peak.threads_per_worker) == ("float32", 2, 1)
    assert torch.get_num_threads() >= 1


def test_memory_sampler_sees_a_child_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(3)"])
    try:
        time.sleep(1.0)
        assert child.pid in process_tree(os.getpid())
        rss, pss = memory_kb(child.pid)
        assert rss > 40_000 and 0 < pss <= rss
        with TreeSampler(os.getpid(), interval=0.05) as sampler:
            time.sleep(0.3)
        assert sampler.peak.rss_mb > 40 and sampler.peak.processes >= 2
    finally:
        child.kill()
        child.wait()


def test_run_child_reports_results_memory_and_failures(tmp_path):
    out = tmp_path / "r.json"
    code = f"import json, time; json.dump({{'impl': 'x'}}, open({str(out)!r}, 'w')); time.sleep(0.6)"
    ok = run_child([sys.executable, "-c", code], out, tmp_path / "ok.log", 60, dict(os.environ))
    assert ok["impl"] == "x" and ok["peak_rss_tree_mb"] > 0 and ok["processes"] >= 1
    bad = run_child(
        [sys.executable, "-c", "raise SystemExit('boom')"], tmp_path / "none.json", tmp_path / "b.log", 60, {}
    )
    assert "exit code 1" in bad["error"] and "boom" in bad["error"]


def _result(name, spr, ips, precision="fp32"):
    return {"impl": name, "seconds_per_round": spr, "images_per_sec": ips, "precision": precision, "runtime": name}


def test_summary_ratios_and_targets():
    results = {
        "fedcifar": {**_result("fedcifar", 10.0, 120.0, "bf16"), "overhead_fraction": 0.01},
        "paper-style": _result("paper-style", 40.0, 30.0),
        "flower": _result("flower", 25.0, 48.0),
    }
    probe = {"flops_per_image": 3.3e9, "peak_matmul_bfloat16": 400e9, "peak_matmul_float32": 150e9}
    s = summarize(results, probe)
    assert s["speedup_vs_paper_images_per_sec"] == pytest.approx(4.0)
    assert s["speedup_vs_flower_seconds_per_round"] == pytest.approx(2.5)
    assert s["fraction_of_peak_matmul"] == pytest.approx(3.3e9 * 120 / 400e9)  # bf16 run: bf16 peak
    assert s["met"] == {
        "3x paper-style images/s": True,
        "2x Flower seconds/round": True,
        ">= 90% of bf16 peak matmul": True,
        "overhead < 2% of round": True,
    }
    table = markdown({"workload_text": "w", "results": results, "summary": s, "memory_scaling": {}})
    assert "| fedcifar |" in table and "| 4.00x |" in table and "| 99.00 % |" in table


def test_summary_without_competitors_leaves_ratios_out():
    s = summarize({"fedcifar": _result("fedcifar", 10.0, 120.0)}, None)
    assert "speedup_vs_paper_images_per_sec" not in s and s["met"]["3x paper-style images/s"] is None


def test_bench_stops_at_once_without_the_data(tmp_path):
    from fedcifar.data.cifar100 import DataError

    with pytest.raises(DataError, match="cifar-100-python"):
        run_bench(BenchOptions(Workload(data_dir=str(tmp_path / "nowhere")), tmp_path / "out"), say=lambda _l: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.integration  # every implementation in its child process
def test_tiny_bench_end_to_end(tmp_path, cifar):
    w = Workload(rounds=2, clients_per_round=2, local_steps=1, batch_size=16, eval_limit=200)
    opts = BenchOptions(
        w,
        tmp_path,
        ("fedcifar", "paper-style", "tta"),
        scale_clients=(64, 500),
        probe_seconds=0.02,
        probe_sizes=(64,),
        tta_target=0.0,  # reached by the first evaluated round
        tta_max_rounds=2,
        tta_overrides=("num_clients=8", "clients_per_round=2", "local_steps=1", "eval_limit=100"),
    )
    bench = run_bench(opts, say=lambda _line: None)
    for name in ("fedcifar", "paper-style"):
        r = bench["results"][name]
        assert "error" not in r, r
        assert r["train_images"] == [32, 32] and r["seconds_per_round"] > 0 and r["peak_rss_self_mb"] > 100
    assert bench["probe"]["flops_per_image"] == pytest.approx(3.33e9, rel=0.02)
    assert set(bench["memory_scaling"]) == {"64", "500"}
    assert all(m["peak_rss_self_mb"] > 0 for m in bench["memory_scaling"].values())
    assert "speedup_vs_paper_images_per_sec" in bench["summary"]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(bench["summary"]))
    assert "| paper-style |" in (tmp_path / "bench.md").read_text()
    tta = bench["time_to_accuracy"]
    assert set(tta) == {"auto", "fp32"} and all(t["reached"] and t["rounds"] == 1 for t in tta.values()), tta
    assert "fp32" in tta["fp32"]["runtime"] and "| fp32 |" in (tmp_path / "bench.md").read_text()


def test_time_to_accuracy_stops_at_the_target_and_reports_a_miss(cifar):
    from fedcifar.bench.impl import run_time_to_accuracy

    tiny = dict(num_clients=8, clients_per_round=2, local_steps=1, eval_limit=100)
    hit = run_time_to_accuracy(Workload(), "fp32", 0.0, 3, **tiny)
    assert hit["reached"] and hit["rounds"] == 1 and hit["rounds_run"] == 1 and hit["seconds"] > 0
    miss = run_time_to_accuracy(Workload(), "fp32", 1.0, 2, **tiny)
    assert not miss["reached"] and miss["rounds"] is None and miss["rounds_run"] == 2 and len(miss["test_acc"]) == 2
    table = markdown(
        {"workload_text": "w", "results": {}, "summary": {}, "time_to_accuracy": {"auto": hit, "fp32": miss}}
    )
    assert "Time to 0% test accuracy" in table and "| fp32 | " in table and "not in 2" in table


def test_partition_plot_of_a_thousand_clients_is_one_raster(tmp_path, monkeypatch):
    import matplotlib.axes

    from fedcifar.track.plots import plot_partition

    bars = []
    real_barh = matplotlib.axes.Axes.barh
    monkeypatch.setattr(matplotlib.axes.Axes, "barh", lambda self, *a, **k: bars.append(1) or real_barh(self, *a, **k))
    counts = np.random.default_rng(0).integers(0, 5, size=(1000, 100))
    path = plot_partition(counts, tmp_path / "p.png")
    assert path.stat().st_size > 0
    assert len(bars) == 1  # only the size panel; the composition is an image, not 100 bar series


# -- flower-deployment: LocalBackend against a SuperLink + SuperNodes on loopback ------------------


def _trace_line(round_, client, failure=""):
    metrics = {"app_process_start": 103.0, "app_start": 104.5, "app_prepare": 0.5, "seconds": 10.0}
    return {
        "round": round_,
        "client": client,
        "encode_start": 100.0,
        "encode_end": 100.25,
        "push_start": 100.5,
        "push_end": 101.5,
        "arrived": 116.0,
        "decoded": 116.25,
        "failure": failure,
        "metrics": {} if failure else metrics,
    }


def test_a_fit_message_timeline_splits_into_stages():
    from fedcifar.bench.flower_deploy import breakdown, stages

    assert stages(_trace_line(2, 0)) == {
        "encode": 0.25,
        "push": 1.0,
        "to_process": 1.5,
        "process_start": 1.5,
        "prepare": 0.5,
        "train": 10.0,
        "reply": 1.0,  # 116 - (104.5 + 0.5 + 10)
        "decode": 0.25,
    }
    assert stages(_trace_line(2, 1, failure="no reply")) is None
    b = breakdown([_trace_line(1, 0), _trace_line(2, 0), _trace_line(2, 1, failure="x")], keep_rounds={2})
    assert b["messages"] == 1 and b["median_seconds"]["train"] == 10.0
    assert breakdown([], {2}) == {"messages": 0}


def test_deployment_workload_trains_the_shared_workloads_images_per_round():
    from fedcifar.bench.flower_deploy import deployment_config, deployment_values

    values = deployment_values(Workload(clients_per_round=4, local_epochs=1), 2, 3125.0, cores=2)
    cfg = deployment_config(values)
    assert (cfg.num_clients, cfg.clients_per_round, cfg.local_steps) == (2, 2, 24)  # 3125 / (2 x 64)
    assert (cfg.workers, cfg.threads_per_worker, cfg.compile) == (2, 1, "off")


def test_deployment_summary_and_table():
    r = {
        "runtime": "SuperLink + 2 SuperNodes",
        "config": {"num_clients": 2, "local_steps": 24, "batch_size": 64, "rounds": 3, "workers": 2},
        "same_clients": True,
        "local_seconds_per_round": 20.0,
        "seconds_per_round": 21.0,
        "local_fit_seconds": [25.0, 20.0, 20.0],
        "fit_seconds": [30.0, 21.0, 21.0],
        "overhead_ratio": 1.05,
        "up_seconds": 9.0,
        "run_start_seconds": 12.0,
        "breakdown": {
            "messages": 1,
            "median_seconds": dict.fromkeys(("encode", "push", "to_process", "process_start"), 0.1)
            | dict.fromkeys(("prepare", "train", "reply", "decode"), 0.2),
            "max_seconds": dict.fromkeys(
                ("encode", "push", "to_process", "process_start", "prepare", "train", "reply", "decode"), 0.3
            ),
        },
    }
    r["config"]["threads_per_worker"] = 1
    s = summarize({"flower-deployment": r}, None)
    assert s["flower_deployment_overhead"] == pytest.approx(0.05) and s["flower_deployment_met"] is True
    table = markdown({"workload_text": "w", "results": {"flower-deployment": r}, "summary": s})
    assert "| FlowerBackend | 21.0 | 21.0 |" in table and "1.05x (+5 %" in table and "| process_start |" in table


def test_warm_clientapps_shorten_flowers_waits():
    import flwr.supercore.inflatable.inflatable_utils as iu

    from fedcifar.flower.warm import PULL_RETRY, _ShortSleeps, quick_pulls

    saved = [dict(f.__kwdefaults__) for f in (iu.pull_objects, iu.pull_and_inflate_object_from_tree)]
    try:
        quick_pulls()  # raises if this Flower's pull functions lost those keyword arguments
        assert all(iu.pull_objects.__kwdefaults__[k] == v for k, v in PULL_RETRY.items())
    finally:
        iu.pull_objects.__kwdefaults__, iu.pull_and_inflate_object_from_tree.__kwdefaults__ = saved
    short = _ShortSleeps(0.01)
    t0 = time.perf_counter()
    short.sleep(3)
    assert time.perf_counter() - t0 < 1.0 and short.monotonic() > 0  # everything else is `time`'s


@pytest.mark.integration  # a Flower deployment
def test_tiny_flower_deployment_bench(tmp_path, cifar):
    w = Workload(rounds=2, clients_per_round=2, local_steps=1, batch_size=16, eval_limit=200)
    opts = BenchOptions(
        w,
        tmp_path,
        ("flower-deployment",),
        scale_clients=(),
        flower_clientapp="warm",
        flower_poll=0.1,
        flower_tls=False,
    )
    r = run_bench(opts, say=lambda _line: None)["results"]["flower-deployment"]
    assert "error" not in r, r
    assert r["same_clients"] and r["clients_failed"] == 0 and r["train_images"] == [32, 32]
    assert len(r["round_seconds"]) == len(r["local_round_seconds"]) == 2 and r["overhead_ratio"] > 0
    assert r["breakdown"]["messages"] == 2 and r["breakdown"]["median_seconds"]["train"] > 0  # round 2, 2 nodes
    assert r["processes"] >= 5  # SuperLink, 2 SuperNodes and their 2 warm SuperExecs at least
    assert "| FlowerBackend |" in (tmp_path / "bench.md").read_text()
