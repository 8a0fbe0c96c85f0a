"""``fedcifar bench``: its argument parser and command. Heavy imports wait for the command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedcifar.errors import UserError


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="time fedcifar against the paper-style pipeline and Flower, one run")
    bench.add_argument("--quick", action="store_true", help="3 rounds of 4 clients, 1 local epoch (about 10 minutes)")
    bench.add_argument("--rounds", type=int, help="rounds per implementation (round 1 is warm-up; default 3)")
    bench.add_argument("--clients", type=int, help="clients trained per round (default 16)")
    bench.add_argument("--epochs", type=int, help="local epochs (default 2)")
    bench.add_argument("--only", help="comma-separated subset of: fedcifar,paper-style,flower,flower-deployment,tta")
    bench.add_argument(
        "--flower-clientapp",
        choices=["warm", "fresh"],
        default="warm",
        help="flower-deployment: nodes as `fedcifar federation up` starts them (warm, the default) or with "
        "Flower's own fresh flwr-clientapp process per message",
    )
    bench.add_argument(
        "--flower-poll",
        type=float,
        help="flower-deployment: SuperExec task poll interval, s (default: warm 0.1, fresh 1)",
    )
    bench.add_argument(
        "--tta-target",
        type=float,
        default=0.2,
        help="tta: test accuracy to reach on paper-cpu, bf16 default vs fp32 (default 0.2; not in --quick)",
    )
    bench.add_argument("--scale", default="64,1000", help="federation sizes for the memory check ('' to skip)")
    bench.add_argument("--out", default="bench", help="folder for bench.json, bench.md and logs (default: bench)")
    bench.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: $FEDCIFAR_DATA_DIR)")
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from fedcifar.bench.run import IMPLEMENTATIONS, PARTS, QUICK, BenchOptions, run_bench
    from fedcifar.bench.workload import Workload

    sizes = dict(QUICK) if args.quick else {}
    for key, value in (("rounds", args.rounds), ("clients_per_round", args.clients), ("local_epochs", args.epochs)):
        if value is not None:
            sizes[key] = value
    only = tuple(args.only.split(",")) if args.only else (IMPLEMENTATIONS if args.quick else PARTS)
    unknown = set(only) - set(PARTS)
    if unknown:
        raise UserError(f"--only takes {', '.join(PARTS)}; got {', '.join(sorted(unknown))}")
    if not 0 < args.tta_target <= 1:
        raise UserError(f"--tta-target is a test accuracy in (0, 1], got {args.tta_target}")
    workload = Workload(data_dir=args.data_dir or "", **sizes)
    if workload.rounds < 1 or workload.clients_per_round < 1 or workload.local_epochs < 1:
        raise UserError("--rounds, --clients and --epochs must be >= 1")
    try:
        scale = tuple(int(n) for n in args.scale.split(",")) if args.scale else ()
    except ValueError:
        raise UserError(f"--scale takes comma-separated client counts, got {args.scale!r}") from None
    if args.flower_poll is not None and not 0.01 <= args.flower_poll <= 60:
        raise UserError(f"--flower-poll is seconds in [0.01, 60] (Flower's bounds), got {args.flower_poll}")
    opts = BenchOptions(
        workload,
        Path(args.out),
        only,
        scale,
        tta_target=args.tta_target,
        flower_clientapp=args.flower_clientapp,
        flower_poll=args.flower_poll,
    )
    bench = run_bench(opts, say=lambda line: print(line, file=sys.stderr, flush=True))
    print((Path(args.out) / "bench.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'bench.json'}", file=sys.stderr)
    return 1 if any("error" in r for r in bench["results"].values()) else 0
