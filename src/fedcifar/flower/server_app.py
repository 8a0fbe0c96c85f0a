"""The ServerApp: fedcifar's round loop, with its clients on SuperNodes.

``fedcifar federation run`` (or ``flwr run``) starts it with a run config::

    preset = "paper-cpu"                  # any fedcifar preset
    overrides = "rounds=2 eval_limit=500" # --set pairs, space-separated
    out = "/abs/path/to/run"              # an ordinary fedcifar run directory
    resume = false                        # continue the run in ``out``
    data-dir = ""                         # where the server's CIFAR-100 test set is

Client selection uses fedcifar's own (seed, round) generator, never Flower's sampling, so a
run here picks the same clients as the same config in the simulator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcifar.calibrate import resolve_runtime as calibrated_runtime
from fedcifar.config import build_config, parse_overrides
from fedcifar.data.cifar100 import load_cifar100
from fedcifar.federation import partition_for
from fedcifar.flower.backend import FlowerBackend
from fedcifar.runtime import resolve_runtime
from fedcifar.server.loop import run_federation
from fedcifar.strategy.population import Population
from fedcifar.track.rundir import write_class_counts

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    cfg = build_config(str(rc.get("preset", "paper")), None, parse_overrides(str(rc.get("overrides", "")).split()))
    out = Path(str(rc["out"]))
    resume = bool(rc.get("resume", False))
    data = load_cifar100(str(rc.get("data-dir", "")) or None, download=False)
    # One process evaluates on every core, in the precision a simulated run of cfg takes here.
    precision = calibrated_runtime(cfg.replace(compile="off")).amp_dtype  # bf16 or not: as the simulator picks
    runtime = dataclasses.replace(resolve_runtime(cfg.replace(workers=1)), amp_dtype=precision)
    runtime.apply_global_settings()
    backend = FlowerBackend(grid, cfg, data.test_x, data.test_y, runtime)
    labels = data.train_y.numpy()
    population = backend.discover(expected=Population.from_partition(labels, partition_for(cfg, labels)))
    if not resume or not (out / "partition.csv").exists():
        out.mkdir(parents=True, exist_ok=True)
        write_class_counts(population.label_counts, out, f"{cfg.num_clients} SuperNodes' label counts, as checked")
    run_federation(cfg, out, backend, population, resume=resume, device=runtime.device)
