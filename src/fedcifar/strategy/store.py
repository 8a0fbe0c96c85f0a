"""Per-client state kept across rounds: SCAFFOLD's c_i, FedBN's local BatchNorm layers.

In a deployment each client would keep its own state. The simulator keeps it for them in
one :class:`ClientStore` per algorithm, in host memory (never in files), and saves it in the
resume checkpoint as ``<prefix><client>.<name>`` tensors so a resumed run is exact.

Memory is the price of simulating stateful clients: SCAFFOLD holds one model-sized c_i per
client that has trained (45 MB for ResNet-18, 2.9 GB for the paper's 64 clients); FedBN
holds only the BatchNorm layers (about 40 KB floats, 0.2 MB per client).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from fedcifar.messages import Weights


class ClientStore:
    """A mapping client id -> named tensors, owned by the store once put."""

    def __init__(self) -> None:
        self._state: dict[int, Weights] = {}

    def get(self, client_id: int) -> Weights | None:
        """The client's state, or None if it has none yet. Callers must not modify it."""
        return self._state.get(client_id)

    def put(self, client_id: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Replace the client's state (tensors move to host memory; the old dict is not mutated)."""
        self._state[int(client_id)] = {k: v.detach().to("cpu") for k, v in tensors.items()}

    def __len__(self) -> int:
        return len(self._state)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._state))

    def state_dict(self, prefix: str) -> Weights:
        """Flat ``{prefix}{client}.{name}`` tensors for the checkpoint."""
        return {f"{prefix}{cid}.{name}": t for cid in self for name, t in self._state[cid].items()}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
        """Restore from :meth:`state_dict` output; other keys in ``tensors`` are ignored."""
        self._state = {}
        for key, t in tensors.items():
            if key.startswith(prefix):
                cid, _, name = key.removeprefix(prefix).partition(".")
                self._state.setdefault(int(cid), {})[name] = t.detach().to("cpu")
