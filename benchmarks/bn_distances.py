"""Why robust rules measure trained parameters only: what BatchNorm statistics do to distances.

Runs the first rounds of ``paper-cpu`` with 25 % of the clients sign-flipping (the attack
table's setting), records every client result as it reaches the server, and prints per round:
each client's update norm over trained parameters and over BatchNorm running statistics, and
how close the geometric median comes to the honest clients' mean update (cosine) when its
Weiszfeld distances cover every float entry or the trained parameters only. Writes JSON.

    FEDCIFAR_DATA_DIR=../shared/data python benchmarks/bn_distances.py --rounds 3 --out runs/bench/bn_distances.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from fedcifar.atomic import atomic_write_text
from fedcifar.config import build_config
from fedcifar.data.cifar100 import load_cifar100
from fedcifar.federation import malicious_clients, partition_for
from fedcifar.messages import ClientResult, Weights
from fedcifar.model.spec import is_trained
from fedcifar.runtime import resolve_runtime
from fedcifar.server.backend import FitTask
from fedcifar.server.loop import run_federation
from fedcifar.sim.local import LocalBackend
from fedcifar.strategy.population import Population
from fedcifar.strategy.robust import convex_combination, weiszfeld_weights


class Recording:
    """A backend that passes everything through and keeps each round's results and global weights."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.rounds: list[tuple[Weights, list[ClientResult]]] = []

    def fit(self, server_round: int, global_weights: Weights, tasks: Sequence[FitTask]) -> Iterator:
        kept: list[ClientResult] = []
        self.rounds.append(({k: v.clone() for k, v in global_weights.items()}, kept))
        for item in self.inner.fit(server_round, global_weights, tasks):
            if isinstance(item, ClientResult):
                kept.append(item)
            yield item

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def deltas(g: Mapping[str, torch.Tensor], results: list[ClientResult], keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r.weights[k].float() - g[k].float() for r in results]) for k in keys}


def norms(stacks: Mapping[str, torch.Tensor]) -> list[float]:
    sq = sum(x.reshape(x.shape[0], -1).double().square().sum(dim=1) for x in stacks.values())
    return [round(float(v), 2) for v in sq.sqrt()]


def round_report(g: Weights, results: list[ClientResult], bad: frozenset[int]) -> dict:
    floats = [k for k, v in g.items() if v.is_floating_point()]
    trained = [k for k in floats if is_trained(k, g[k])]
    every, params = deltas(g, results, floats), deltas(g, results, trained)
    honest = torch.tensor([r.client_id not in bad for r in results])
    sizes = torch.tensor([float(r.num_examples) for r in results])

    def flat(d: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([d[k].flatten() for k in trained])

    target = flat(convex_combination({k: x[honest] for k, x in params.items()}, sizes[honest]))

    def cosine(beta: torch.Tensor) -> float:
        return round(
            float(torch.nn.functional.cosine_similarity(flat(convex_combination(params, beta)), target, dim=0)), 3
        )

    return {
        "clients": [r.client_id for r in results],
        "malicious": [r.client_id for r in results if r.client_id in bad],
        "parameter_update_norms": norms(params),
        "statistic_update_norms": norms({k: every[k] for k in floats if k not in trained}),
        "cosine_to_honest_mean": {
            "weighted_mean": cosine(sizes),
            "geometric_median_every_float": cosine(weiszfeld_weights(every, sizes, 100)),
            "geometric_median_trained_parameters": cosine(weiszfeld_weights(params, sizes, 100)),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench/bn_distances.json")
    args = parser.parse_args()
    cfg = build_config(
        "paper-cpu",
        overrides={"rounds": args.rounds, "attack": "sign_flip", "attack_fraction": 0.25, "strategy": "median"},
    )
    data = load_cifar100(download=False)
    runtime = resolve_runtime(cfg)
    runtime.apply_global_settings()
    labels = data.train_y.numpy()
    partition = partition_for(cfg, labels)
    with LocalBackend(cfg, data, partition, runtime) as local, tempfile.TemporaryDirectory() as run_dir:
        backend = Recording(local)
        population = Population.from_partition(labels, partition)
        run_federation(cfg, run_dir, backend, population, device=runtime.device, progress=False)
    bad = malicious_clients(cfg)
    report = [round_report(g, results, bad) for g, results in backend.rounds]
    for r, rep in enumerate(report, 1):
        honest = [n for c, n in zip(rep["clients"], rep["parameter_update_norms"], strict=True) if c not in bad]
        attack = [n for c, n in zip(rep["clients"], rep["parameter_update_norms"], strict=True) if c in bad]
        stats = rep["statistic_update_norms"]
        print(
            f"round {r}: parameters honest {min(honest):.1f}-{max(honest):.1f}, attackers "
            f"{min(attack, default=0):.1f}-{max(attack, default=0):.1f}; statistics {min(stats):.1f}-{max(stats):.1f}; "
            f"cosine to the honest mean: {rep['cosine_to_honest_mean']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out, json.dumps({"config": "paper-cpu attack=sign_flip attack_fraction=0.25", "rounds": report}, indent=1)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
