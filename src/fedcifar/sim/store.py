"""The simulated clients' own state between rounds: SCAFFOLD's c_i, FedBN's BatchNorm layers.

In a deployment each node keeps its client's state (a Flower SuperNode in ``context.state``).
The simulator keeps it for its clients in one :class:`ClientStore`, beside the clients'
data in the backend, never on the server's side: the strategy sees only what a client
sends. It sits in host memory (never in files), and goes into the resume checkpoint as
``clients.<client>.<name>.<entry>`` tensors, so a resumed run is exact.

Memory is the price of simulating stateful clients: SCAFFOLD holds one model-sized c_i per
client that has trained (45 MB for ResNet-18, 2.9 GB for the paper's 64 clients); FedBN
holds only the BatchNorm layers (about 40 KB floats, 0.2 MB per client).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from fedcifar.messages import ClientState


class ClientStore:
    """A mapping client id -> :data:`~fedcifar.messages.ClientState`, owned by the store once put."""

    def __init__(self) -> None:
        self._state: dict[int, ClientState] = {}

    def get(self, client_id: int) -> ClientState:
        """The client's state ({} if it has none yet). Callers must not modify it."""
        return self._state.get(int(client_id), {})

    def put(self, client_id: int, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Replace the client's state (tensors move to host memory; the given dicts are not mutated)."""
        if "." in "".join(state):
            raise ValueError(f"client state names must not contain '.': {sorted(state)}")
        copy = {name: {k: v.detach().to("cpu") for k, v in t.items()} for name, t in state.items()}
        if copy:
            self._state[int(client_id)] = copy
        else:
            self._state.pop(int(client_id), None)

    def __len__(self) -> int:
        return len(self._state)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._state))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{client}.{name}.{entry}`` tensors for the checkpoint."""
        return {
            f"{cid}.{name}.{key}": t for cid in self for name, ts in self._state[cid].items() for key, t in ts.items()
        }

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` output (replacing everything held)."""
        self._state = {}
        for flat, t in tensors.items():
            cid, name, key = flat.split(".", 2)
            self._state.setdefault(int(cid), {}).setdefault(name, {})[key] = t.detach().to("cpu")
