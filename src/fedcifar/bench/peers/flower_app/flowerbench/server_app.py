"""flowerbench: the ServerApp, as in Flower's PyTorch quickstart, with Flower's own FedAvg.

The run has one SuperNode per client trained in a round and FedAvg trains all of them; each
node trains the client the shared schedule names for (round, node). That keeps the work
identical to the other implementations, whose sampling is the same schedule. Round times
are taken with the ``evaluate_fn`` hook, which Flower calls after every round.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedcifar.bench.workload import Workload
from flowerbench.task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    workload_path = str(context.run_config.get("workload", "")) or os.environ["FLOWERBENCH_WORKLOAD"]
    w = Workload.load(workload_path)
    k = w.clients_per_round

    global_model = Net(seed=w.seed)
    arrays = ArrayRecord(global_model.state_dict())
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=k, min_available_nodes=k)
    train_config = ConfigRecord(
        {
            "lr": w.lr,
            "local-epochs": w.local_epochs,
            "local-steps": w.local_steps,
            "batch-size": w.batch_size,
            "clients-per-round": k,
            "schedule": [c for clients in w.schedule() for c in clients],
            "data-dir": w.data_dir,
            "num-clients": w.num_clients,
            "alpha": w.alpha,
            "min-partition-size": w.min_partition_size,
            "seed": w.seed,
        }
    )
    ticks: list[float] = []

    def clock(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        ticks.append(time.perf_counter())
        return None

    strategy.start(grid=grid, initial_arrays=arrays, train_config=train_config, num_rounds=w.rounds, evaluate_fn=clock)
    out = os.environ.get("FLOWERBENCH_TICKS")
    if out:
        Path(out).write_text(json.dumps({"ticks": ticks}))
