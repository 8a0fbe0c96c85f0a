"""bench.json's summary: ratios against the targets, and the markdown table. Pure functions."""

from __future__ import annotations

from typing import Any

TARGETS = {
    "speedup_vs_paper_images_per_sec": 3.0,
    "speedup_vs_flower_seconds_per_round": 2.0,
    "fraction_of_peak_matmul": 0.90,
    "overhead_fraction_max": 0.02,
}


def summarize(results: dict[str, dict[str, Any]], probe: dict[str, Any] | None) -> dict[str, Any]:
    """Ratios fedcifar/paper-style and fedcifar/Flower, FLOP/s use, overhead; None where missing."""
    ours = results.get("fedcifar")
    out: dict[str, Any] = {"targets": TARGETS}
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
    return "\n".join(lines) + "\n"


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
