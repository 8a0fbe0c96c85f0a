"""What keeping a client's state in a SuperNode's ``context.state`` costs each Flower message.

Each message runs in a fresh ``flwr-clientapp`` process that pulls the node's context from its
SuperNode and pushes it back afterwards, so SCAFFOLD's c_i and FedBN's BatchNorm layers go
through Flower's records and protobuf twice per message. This times one such pass (records,
``context_to_proto``, serialise, parse, ``context_from_proto``, back to tensors) for each model,
prints the figures and writes JSON.

    python benchmarks/node_state_cost.py --out node_state.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from flwr.app import Context, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto

from fedcifar.flower import codec
from fedcifar.model import build_model
from fedcifar.model.spec import batchnorm_keys


def scaffold_fedbn_state(arch: str) -> dict[str, dict[str, torch.Tensor]]:
    """A client's state under SCAFFOLD + FedBN: c_i for every trained parameter, its BN layers."""
    model = build_model(arch=arch)
    weights = model.state_dict()
    g = torch.Generator().manual_seed(0)
    control = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    return {"control": control, "local": {k: weights[k].clone() for k in batchnorm_keys(weights)}}


def one_pass(state: dict[str, dict[str, torch.Tensor]]) -> tuple[float, int]:
    """Seconds for state -> context -> bytes -> context -> state, and the bytes."""
    t0 = time.perf_counter()
    proto = context_to_proto(Context(1, 1, {}, RecordDict(codec.state_records(state)), {}))
    raw = proto.SerializeToString()
    back = codec.state_from_records(context_from_proto(type(proto).FromString(raw)).state)
    seconds = time.perf_counter() - t0
    assert all(torch.equal(back["control"][k], v) for k, v in state["control"].items())
    return seconds, len(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="node_state.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for arch in ("resnet20", "resnet18"):
        state = scaffold_fedbn_state(arch)
        times, size = zip(*(one_pass(state) for _ in range(args.repeats)), strict=True)
        row = {"arch": arch, "state_mb": size[0] / 1e6, "pass_seconds_best": min(times)}
        rows.append(row)
        print(f"{arch}: {row['state_mb']:.1f} MB of SCAFFOLD + FedBN state; one pass {min(times) * 1000:.0f} ms")
    with open(args.out, "w") as f:
        json.dump({"repeats": args.repeats, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
