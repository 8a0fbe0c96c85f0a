"""The ``fedcifar`` command: thin subcommands that parse, call the library and print."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from fedcifar.bench.cli import add_bench_parser
from fedcifar.config import PRESETS, ConfigError, build_config, config_from_dict, parse_overrides
from fedcifar.errors import UserError
from fedcifar.flower.cli import add_federation_parser
from fedcifar.serve.cli import add_serve_parser

# Every strategy at its default (tuned here, or its paper's: README "Strategies"), FedAvg on three
# seeds for the spread (the preset's seed 1, then 2 and 3; seed 0 was the tuning seed).
# fedavgm's default (eta 1, beta 0.5) is also the paper-cpu-plus recipe.
DEFAULT_COMPARE = (
    "fedavg",
    "fedavg:seed=2",
    "fedavg:seed=3",
    "fedprox",
    "fedavg:client_weighting=feddisco",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "scaffold",
    "feddyn",
    "fedavg:fedlc_tau=1.0",
    "fedavg:feddecorr_beta=0.1",
    "fedexp",
)
DEFAULT_TARGETS = (0.2, 0.3)

EXIT_USAGE = 2


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: $FEDCIFAR_DATA_DIR)")
    p.add_argument("--no-download", action="store_true", help="never try to download CIFAR-100")


def _saved_run(run_dir: Path):
    """A run directory's checkpoint and config, each checked (names, shapes) before anything trains."""
    from fedcifar.federation import model_spec
    from fedcifar.track.checkpoint import CHECKPOINT_FILE, check_weights, load_run

    ckpt, cfg = load_run(run_dir)
    check_weights(run_dir / CHECKPOINT_FILE, ckpt.weights, model_spec(cfg).build())
    return ckpt, cfg


def _saved_federated_run(run_dir: Path):
    """(rounds completed, config) of the federated run in ``run_dir``."""
    ckpt, cfg = _saved_run(run_dir)
    if "centralized" in ckpt.meta:
        raise UserError(f"{run_dir} holds a centralized run; continue it with fedcifar centralized --resume")
    return ckpt.round, cfg


def _with_rounds(cfg, overrides: dict[str, str]):
    """``cfg`` with ``--set rounds=N`` (or DP's ``target_epsilon``) applied, checked like any --set;
    other keys are refused."""
    from fedcifar.track.rundir import RESUMABLE_CHANGES

    extra = sorted(set(overrides) - set(RESUMABLE_CHANGES))
    if extra:
        raise UserError(
            f"a resumed run keeps its config; only --set rounds=N or target_epsilon=E may change (got {extra})"
        )
    return config_from_dict({**cfg.to_dict(), **overrides})


def _train_plan(args: argparse.Namespace, run_dir: Path, overrides: dict[str, str]):
    """(config, resume) for ``fedcifar train``: a new run, or the one in ``run_dir`` continued."""
    from fedcifar.config import load_yaml
    from fedcifar.track.checkpoint import CHECKPOINT_FILE
    from fedcifar.track.rundir import RESUMABLE_CHANGES, check_resumable, config_changes

    saved = (run_dir / CHECKPOINT_FILE).exists()
    if args.resume:
        if args.config:
            raise UserError("a resumed run keeps its config; drop --config")
        if saved:
            done, old = _saved_federated_run(run_dir)
            cfg = _with_rounds(old, overrides)
            check_resumable(run_dir, done, old, cfg)
            return cfg, True
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} holds no run (no {CHECKPOINT_FILE}, no config.yaml); start one with --out")
        print(f"fedcifar: {run_dir} has no complete round; starting from round 1", file=sys.stderr)
        return _with_rounds(config_from_dict(load_yaml(run_dir / "config.yaml")), overrides), False
    cfg = build_config(args.preset, args.config, overrides)
    if not saved:
        return cfg, False
    if not args.auto_resume:
        raise UserError(f"{run_dir} already holds a run; resume it with --resume {run_dir} or pick another --out")
    done, old = _saved_federated_run(run_dir)
    changed = config_changes(old, cfg, ignore=RESUMABLE_CHANGES)
    if changed:
        raise UserError(
            f"{run_dir} holds a run of another config ({changed}); only rounds and target_epsilon may change"
        )
    check_resumable(run_dir, done, old, cfg)
    return cfg, True


def cmd_train(args: argparse.Namespace) -> int:
    from fedcifar.data.cifar100 import load_cifar100
    from fedcifar.sim.engine import run_training
    from fedcifar.track.lock import run_dir_lock

    overrides = parse_overrides(args.set or [])
    if args.out is None and args.resume is None:
        raise UserError("train needs --out RUN_DIR (or --resume RUN_DIR)")
    if args.out and args.resume and Path(args.out) != Path(args.resume):
        raise UserError("--out and --resume name different run directories")
    run_dir = Path(args.resume or args.out)
    if args.resume and not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run directory")
    with run_dir_lock(run_dir):  # before reading anything: a second trainer stops here
        cfg, resume = _train_plan(args, run_dir, overrides)
        data = load_cifar100(args.data_dir, download=not args.no_download)
        run_training(cfg, run_dir, data, resume=resume, progress=not args.quiet)
    return 0


def cmd_centralized(args: argparse.Namespace) -> int:
    from fedcifar.centralized import run_centralized
    from fedcifar.data.cifar100 import load_cifar100
    from fedcifar.track.checkpoint import CHECKPOINT_FILE
    from fedcifar.track.lock import run_dir_lock

    run_dir = Path(args.out)
    if args.images < 0:
        raise UserError(f"--images must be >= 0, got {args.images}")
    with run_dir_lock(run_dir):
        resume = (run_dir / CHECKPOINT_FILE).exists()
        if resume and not args.resume:
            raise UserError(f"{run_dir} already holds a run; continue it with --resume or pick another --out")
        if resume:
            cfg = _saved_run(run_dir)[1]
        else:
            cfg = build_config(args.preset, args.config, parse_overrides(args.set or []))
        data = load_cifar100(args.data_dir, download=not args.no_download)
        frame = run_centralized(cfg, run_dir, data, images=args.images, resume=resume, progress=not args.quiet)
    last = frame.iloc[-1]
    print(
        f"centralized: {int(frame['train_images'].sum()):,} images in {len(frame)} epochs, "
        f"final test acc {last['test_acc']:.2%}, best {frame['test_acc'].max():.2%} -> {run_dir}"
    )
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from fedcifar.data.cifar100 import load_cifar100
    from fedcifar.federation import partition_for
    from fedcifar.track.rundir import write_partition

    cfg = build_config(
        None,
        None,
        {
            "num_clients": args.clients,
            "alpha": args.alpha,
            "seed": args.seed,
            "partitioner": args.partitioner,
            "min_partition_size": args.min_size,
            "clients_per_round": 1,
        },
    )
    data = load_cifar100(args.data_dir, download=not args.no_download)
    labels = data.train_y.numpy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partition = partition_for(cfg, labels)
    counts = write_partition(partition, labels, out, f"{cfg.partitioner} partition, {cfg.num_clients} clients")
    print(
        f"wrote {out / 'partition.csv'} and {out / 'partition.png'}: {len(counts)} clients, sizes {counts.sum(1).min()}-{counts.sum(1).max()}"
    )
    if args.export:
        from fedcifar.data.shards import export_shards

        paths = export_shards(data.train_x, data.train_y, partition, args.export)
        print(f"wrote {len(paths)} client shards to {args.export} (one file per client, with a checksum)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from fedcifar.track.metrics import METRICS_FILE, read_metrics
    from fedcifar.track.plots import plot_curves

    path = Path(args.run_dir) / METRICS_FILE
    if not path.exists():
        raise UserError(f"no {METRICS_FILE} in {args.run_dir}")
    for written in plot_curves(read_metrics(path), args.run_dir):
        print(f"wrote {written}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedcifar.report import write_report
    from fedcifar.track.metrics import METRICS_FILE

    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not (run / METRICS_FILE).is_file():
            raise UserError(f"no {METRICS_FILE} in {run}")
    if args.label and len(args.label) != len(runs):
        raise UserError(f"--label given {len(args.label)} times for {len(runs)} runs")
    out = Path(args.out)
    write_report(runs, out, args.label, args.title or "")
    print((out / "report.md").read_text(), end="")
    print(f"wrote {out / 'report.csv'}, {out / 'report.md'} and {out / 'report.png'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedcifar.compare import parse_variants, run_comparison, variant_config
    from fedcifar.data.cifar100 import load_cifar100

    base = build_config(args.preset, args.config, parse_overrides(args.set or []))
    variants = parse_variants(args.strategies)
    for variant in variants:
        variant_config(base, variant)  # every bad name or value fails before the data loads
    targets = tuple(args.target or DEFAULT_TARGETS)
    if bad := [t for t in targets if not 0 < t <= 1]:
        raise UserError(f"--target is a test accuracy in (0, 1], got {bad[0]}")
    if len(set(targets)) != len(targets):
        raise UserError(f"--target repeats a value: {' '.join(f'{t:g}' for t in targets)}")
    data = load_cifar100(args.data_dir, download=not args.no_download)
    out = Path(args.out)
    table = run_comparison(base, variants, out, data, targets=targets, progress=not args.quiet)
    print((out / "comparison.md").read_text(), end="")
    print(f"wrote {out / 'comparison.csv'}, {out / 'comparison.md'} and {out / 'comparison.png'} ({len(table)} runs)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from fedcifar.data.cifar100 import load_cifar100
    from fedcifar.tune import grid_variants, parse_grid, run_tune, set_line, with_validation

    overrides = parse_overrides(args.set or [])
    grid = parse_grid(args.grid or [])
    if both := sorted(set(grid) & set(overrides)):
        raise UserError(f"{', '.join(both)}: given by both --grid and --set")
    if args.seed is not None:
        if overrides.get("seed", str(args.seed)).strip() != str(args.seed):
            raise UserError("--seed and --set seed= disagree")
        overrides["seed"] = str(args.seed)
    base, note = with_validation(build_config(args.preset, args.config, overrides))
    grid_variants(base, args.strategy, grid)  # every bad key or value fails before the data loads
    if note:
        print(note, file=sys.stderr)
    data = load_cifar100(args.data_dir, download=not args.no_download)
    out = Path(args.out)
    table = run_tune(base, args.strategy, grid, out, data, progress=not args.quiet)
    print((out / "tune.md").read_text(), end="")
    best = table[table["selected"]].iloc[0]
    print(f"wrote {out / 'tune.csv'}, {out / 'tune.md'} and {out / 'tune.png'} ({len(table)} points)")
    print(f"selected {best['point']}: score {best['score']:.2%} (validation only)")
    print(f"use it with: {set_line(table, args.strategy, grid)}")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", help=f"one of: {', '.join(PRESETS)} (default: paper)")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="run a federated training (simulation)")
    _add_config_args(train)
    train.add_argument("--out", help="run directory to create")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last complete round")
    train.add_argument("--auto-resume", action="store_true", help="resume --out if it already holds a run")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(train)
    train.set_defaults(func=cmd_train)


def _add_central_parser(sub: argparse._SubParsersAction) -> None:
    central = sub.add_parser(
        "centralized", help="the same model and optimizer on all training data, for the federated run's image budget"
    )
    _add_config_args(central)
    central.add_argument("--out", required=True, help="run directory (metrics.csv rows are epochs)")
    central.add_argument(
        "--images", type=int, default=0, help="training images in all (default: what the federated config trains)"
    )
    central.add_argument("--resume", action="store_true", help="continue the run in --out")
    central.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(central)
    central.set_defaults(func=cmd_centralized)


def _add_part_parser(sub: argparse._SubParsersAction) -> None:
    part = sub.add_parser("partition", help="write partition.csv and partition.png only")
    part.add_argument("--clients", type=int, default=64)
    part.add_argument("--alpha", type=float, default=0.4)
    part.add_argument("--seed", type=int, default=0)
    part.add_argument("--partitioner", default="dirichlet", choices=["dirichlet", "iid", "shards"])
    part.add_argument("--min-size", type=int, default=10)
    part.add_argument("--out", required=True)
    part.add_argument("--export", metavar="DIR", help="also write each client's shard to DIR (for SuperNodes)")
    _add_data_args(part)
    part.set_defaults(func=cmd_partition)


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser("compare", help="train several strategies on the same partition and seed; table + plot")
    compare.add_argument(
        "--strategies",
        nargs="+",
        default=list(DEFAULT_COMPARE),
        metavar="NAME[:KEY=VALUE,...]",
        help=f"variants to train (default: {' '.join(DEFAULT_COMPARE)})",
    )
    compare.add_argument(
        "--preset", default="compare", help=f"base config, one of: {', '.join(PRESETS)} (default: compare)"
    )
    compare.add_argument("--config", help="YAML file of base config keys")
    compare.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config key (repeatable)")
    compare.add_argument(
        "--target",
        type=float,
        action="append",
        help="test accuracy for the 'rounds to' and 'seconds to' columns (repeatable; default 0.2 and 0.3)",
    )
    compare.add_argument("--out", required=True, help="folder for one run per variant and the comparison files")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(compare)
    compare.set_defaults(func=cmd_compare)


def _add_tune_parser(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser(
        "tune", help="grid-search one strategy's hyperparameters on held-out training images (never the test set)"
    )
    tune.add_argument("--strategy", required=True, help="the strategy whose hyperparameters are tuned")
    tune.add_argument(
        "--grid", action="append", metavar="KEY=V1,V2,...", help="a config key and its values (repeatable: the product)"
    )
    tune.add_argument(
        "--preset", default="compare", help=f"base config, one of: {', '.join(PRESETS)} (default: compare)"
    )
    tune.add_argument("--config", help="YAML file of base config keys")
    tune.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config key (repeatable)")
    tune.add_argument("--seed", type=int, help="the base config's seed (tune on one seed, report on others)")
    tune.add_argument("--out", required=True, help="folder for one run per grid point and tune.csv/.md/.png")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(tune)
    tune.set_defaults(func=cmd_tune)


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="finished runs side by side against training images: table and plot")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--label", action="append", help="name of each run, in order (default: folder names)")
    report.add_argument("--title", help="plot title")
    report.add_argument("--out", required=True, help="folder for report.csv, report.md and report.png")
    report.set_defaults(func=cmd_report)


def _add_plot_parser(sub: argparse._SubParsersAction) -> None:
    plot = sub.add_parser("plot", help="redraw accuracy.png and loss.png from metrics.csv")
    plot.add_argument("run_dir")
    plot.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedcifar", description="Federated learning on CIFAR-100.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_central_parser(sub)
    _add_part_parser(sub)
    add_bench_parser(sub)
    _add_compare_parser(sub)
    _add_tune_parser(sub)
    _add_report_parser(sub)
    _add_plot_parser(sub)
    add_serve_parser(sub)
    add_federation_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fedcifar.data.cifar100 import DataError
    from fedcifar.data.partition import PartitionError
    from fedcifar.track.checkpoint import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, UserError, DataError, PartitionError, CheckpointError) as exc:
        print(f"fedcifar: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fedcifar: interrupted; the last complete round is saved (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
