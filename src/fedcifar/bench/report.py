"""bench.json's summary: ratios against the targets, and the markdown table. Pure functions."""

from __future__ import annotations

import statistics
from typing import Any

TARGETS = {
    "speedup_vs_paper_images_per_sec": 3.0,
    "speedup_vs_flower_seconds_per_round": 2.0,
    "fraction_of_peak_matmul": 0.90,
    "overhead_fraction_max": 0.02,
    "flower_deployment_overhead_max": 0.10,
}


def summarize(results: dict[str, dict[str, Any]], probe: dict[str, Any] | None) -> dict[str, Any]:
    """Ratios fedcifar/paper-style and fedcifar/Flower, FLOP/s use, overhead; None where missing."""
    ours = results.get("fedcifar")
    out: dict[str, Any] = {"targets": TARGETS}
    deployment = results.get("flower-deployment")
    if deployment:
        out["flower_deployment_overhead"] = deployment["overhead_ratio"] - 1.0
        out["flower_deployment_met"] = out["flower_deployment_overhead"] <= TARGETS["flower_deployment_overhead_max"]
    if not ours:
        return out
    paper, flower = results.get("paper-style"), results.get("flower")
    if paper:
        out["speedup_vs_paper_images_per_sec"] = ours["images_per_sec"] / paper["images_per_sec"]
        out["speedup_vs_paper_seconds_per_round"] = paper["seconds_per_round"] / ours["seconds_per_round"]
    if flower:
        out["speedup_vs_flower_seconds_per_round"] = flower["seconds_per_round"] / ours["seconds_per_round"]
        out["speedup_vs_flower_images_per_sec"] = ours["images_per_sec"] / flower["images_per_sec"]
    if probe:
        peak = probe["peak_matmul_bfloat16" if ours.get("precision") == "bf16" else "peak_matmul_float32"]
        achieved = probe["flops_per_image"] * ours["images_per_sec"]
        out["flops_per_image"] = probe["flops_per_image"]
        out["achieved_flops_per_sec"] = achieved
        out["peak_matmul_flops_per_sec"] = peak
        out["fraction_of_peak_matmul"] = achieved / peak
    out["overhead_fraction"] = ours.get("overhead_fraction")
    out["met"] = {
        "3x paper-style images/s": _at_least(out.get("speedup_vs_paper_images_per_sec"), 3.0),
        "2x Flower seconds/round": _at_least(out.get("speedup_vs_flower_seconds_per_round"), 2.0),
        ">= 90% of bf16 peak matmul": _at_least(out.get("fraction_of_peak_matmul"), 0.90),
        "overhead < 2% of round": None if out["overhead_fraction"] is None else out["overhead_fraction"] < 0.02,
    }
    return out


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(bench: dict[str, Any]) -> str:
    """The table the README carries: one row per implementation, then the ratios."""
    results: dict[str, dict[str, Any]] = bench["results"]
    summary = bench["summary"]
    lines = [
        f"Workload: {bench['workload_text']}",
        "",
        "| implementation | setup | s/round (median) | train images/s | peak RSS, MB | peak PSS of process tree, MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in ("fedcifar", "paper-style", "flower"):
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | — | — | — | — |")
            continue
        lines.append(
            f"| {name} | {r.get('runtime', '')} | {_fmt(r.get('seconds_per_round'), '.1f')} | "
            f"{_fmt(r.get('images_per_sec'), '.1f')} | {_fmt(r.get('peak_rss_self_mb'), '.0f')} | "
            f"{_fmt(r.get('peak_pss_tree_mb'), '.0f')} |"
        )
    lines += ["", "| figure | value | target |", "|---|---:|---:|"]
    rows = [
        ("fedcifar / paper-style, training images/s", summary.get("speedup_vs_paper_images_per_sec"), "x", "≥ 3x"),
        ("Flower / fedcifar, seconds per round", summary.get("speedup_vs_flower_seconds_per_round"), "x", "≥ 2x"),
        ("training FLOPs per image (flop_counter)", _scale(summary.get("flops_per_image"), 1e9), " GFLOP", ""),
        ("achieved training FLOP/s", _scale(summary.get("achieved_flops_per_sec"), 1e9), " GFLOP/s", ""),
        (
            "peak matmul FLOP/s, same dtype and layout",
            _scale(summary.get("peak_matmul_flops_per_sec"), 1e9),
            " GFLOP/s",
            "",
        ),
        ("achieved / peak", _scale(summary.get("fraction_of_peak_matmul"), 0.01), " %", "≥ 90 %"),
        ("round overhead outside training and eval", _scale(summary.get("overhead_fraction"), 0.01), " %", "< 2 %"),
    ]
    for label, value, unit, target in rows:
        lines.append(f"| {label} | {_fmt(value, '.2f')}{'' if value is None else unit} | {target} |")
    scale = bench.get("memory_scaling") or {}
    if scale:
        lines += ["", "| clients in the federation | fedcifar peak RSS, MB |", "|---:|---:|"]
        for n, r in sorted(scale.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {n} | {_fmt(r.get('peak_rss_self_mb'), '.0f')} |")
    lines += _time_to_accuracy_lines(bench.get("time_to_accuracy") or {})
    lines += deployment_lines(results.get("flower-deployment"))
    lines += secure_lines(bench.get("secure_aggregation"))
    return "\n".join(lines) + "\n"


STAGE_TEXT = {
    "encode": "server: weights -> records",
    "push": "server: push to the SuperLink",
    "to_process": "until the node's ClientApp process exists",
    "process_start": "process start to handler (start-up, imports, task + message pull)",
    "prepare": "handler: shard load + check, decode, model build",
    "train": "train_client (the work LocalBackend does too)",
    "reply": "training end to reply at the server",
    "decode": "server: records -> weights",
}


def deployment_lines(r: dict[str, Any] | None) -> list[str]:
    """The flower-deployment part: both backends' seconds per round, the ratio, and the stages."""
    if not r:
        return []
    if "error" in r:
        return ["", f"Flower Deployment Engine: failed: {r['error']}"]
    cfg = r["config"]
    lines = [
        "",
        f"Flower Deployment Engine: {r['runtime']}. Workload: ResNet-18, {cfg['num_clients']} clients "
        f"(one per SuperNode), all trained every round, {cfg['local_steps']} steps of batch {cfg['batch_size']} "
        f"each, {cfg['rounds']} rounds; the same config and seed through LocalBackend "
        f"({cfg['workers']} workers x {cfg['threads_per_worker']} thread). Same clients: {r['same_clients']}.",
        "",
        "| backend | s/round (median) | fit phase, s (median) |",
        "|---|---:|---:|",
        f"| LocalBackend | {r['local_seconds_per_round']:.1f} | {_median_measured(r['local_fit_seconds']):.1f} |",
        f"| FlowerBackend | {r['seconds_per_round']:.1f} | {_median_measured(r['fit_seconds']):.1f} |",
        "",
        f"Flower / LocalBackend, seconds per round: {r['overhead_ratio']:.2f}x "
        f"({(r['overhead_ratio'] - 1) * 100:+.0f} %; target ≤ +10 %). Start-up, not in the rounds: "
        f"`up` {r['up_seconds']:.0f} s, submit to first fit message {r['run_start_seconds']:.0f} s.",
    ]
    stages = r.get("breakdown", {})
    if stages.get("messages"):
        lines += [
            "",
            f"Where a fit message's time goes ({stages['messages']} messages of the measured rounds):",
            "",
            "| stage | what | median s | max s |",
            "|---|---|---:|---:|",
        ]
        for key, text in STAGE_TEXT.items():
            lines.append(f"| {key} | {text} | {stages['median_seconds'][key]:.2f} | {stages['max_seconds'][key]:.2f} |")
    return lines


def secure_lines(r: dict[str, Any] | None) -> list[str]:
    """The flower-secagg part: plain and secure seconds per round, the stages, the quantisation error."""
    if not r:
        return []
    if "error" in r:
        return ["", f"Secure aggregation: failed: {r['error']}"]
    st = r["stage_median_seconds"]
    return [
        "",
        f"Secure aggregation (SecAgg+, Flower's workflow and mod): {r['runtime']}, "
        f"{r['config']['rounds']} rounds of {r['nodes']} clients, the same config and seed.",
        "",
        "| | s/round (median) |",
        "|---|---:|",
        f"| plain Flower backend | {r['plain_seconds_per_round']:.2f} |",
        f"| secure aggregation | {r['secure_seconds_per_round']:.2f} ({r['secure_ratio']:.2f}x) |",
        "",
        f"Stages (server wall s, median): keys {st['keys']:.2f}, shares {st['shares']:.2f}, masking "
        f"(training included) {st['masking']:.2f}, of which the clients' own masking {st['mask']:.2f}, "
        f"unmasking {st['unmasking']:.2f}. Quantisation error of a round's aggregate: max "
        f"{r['quantisation_error_max']:.2e} per weight (bound {r['quantisation_bound']:.2e}), "
        f"{r['statistics_error_max']:.2e} per BatchNorm statistic (bound {r['statistics_bound']:.2e}); "
        f"{r['clipped_coordinates']:.0f} coordinates clipped.",
    ]


def _median_measured(values: list[float]) -> float:
    kept = values[1:] if len(values) > 1 else values
    return statistics.median(kept)


def _time_to_accuracy_lines(tta: dict[str, dict[str, Any]]) -> list[str]:
    if not tta:
        return []
    target = next(iter(tta.values())).get("target", 0.0)
    lines = [
        "",
        f"Time to {target:.0%} test accuracy, `paper-cpu` federation (ResNet-20, full test set every round):",
        "",
        "| precision | setup | rounds | wall seconds | train images/s | test acc per round |",
        "|---|---|---:|---:|---:|---|",
    ]
    for precision, r in tta.items():
        if "error" in r:
            lines.append(f"| {precision} | failed: {r['error']} | — | — | — | — |")
            continue
        rounds = r["rounds"] if r.get("reached") else f"not in {r['rounds_run']}"
        accs = " ".join(f"{a:.3f}" for a in r.get("test_acc", []) if a is not None)
        lines.append(
            f"| {precision} | {r.get('runtime', '')} | {rounds} | {_fmt(r.get('seconds'), '.0f')} | "
            f"{_fmt(r.get('images_per_sec'), '.0f')} | {accs} |"
        )
    return lines


def _scale(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit
