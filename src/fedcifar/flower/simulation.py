"""Flower's Simulation Runtime (Ray backend) for fedcifar's apps: how Ray is set up, as plain values.

A simulation SuperLink (``flower-superlink --simulation``) runs each submitted run in one
`flwr-simulation` process: the ServerApp, and the ClientApp in a pool of Ray actors, one
virtual SuperNode per client. `Federation.simulation` starts that SuperLink; this module says
what goes into its environment and into ``flwr federation simulation-config``:

- **this machine** (`RayOptions.address` None): a private Ray instance started by the run and
  gone with it, with ``num_cpus`` CPUs, no dashboard, no usage stats, every socket on
  127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray then binds its GCS, raylet and
  workers to loopback, as it does on a laptop) and its temporary files in a directory of its
  own (so it never joins a Ray cluster someone else started here);
- **a Ray cluster** (``address="HEAD:6379"``, started with ``ray start --head``): the run
  connects to it through ``RAY_ADDRESS``; the cluster owns its CPUs, addresses and dashboard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single-node Ray: bind every socket to 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
}
CLUSTER_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def local_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class RayOptions:
    """Where the simulated clients run and what each one gets."""

    cpus_per_client: int = 1  # one Ray actor (one client at a time) per this many CPUs
    gpus_per_client: float = 0.0  # a fraction of a GPU per actor (0: CPU only)
    num_cpus: int | None = None  # CPUs of the private Ray instance (None: all of this machine's)
    address: str | None = None  # an existing Ray cluster, e.g. "10.0.0.1:6379" (None: a private instance)

    def __post_init__(self) -> None:
        if self.cpus_per_client < 1:
            raise ValueError(f"cpus_per_client must be >= 1, got {self.cpus_per_client}")
        if self.gpus_per_client < 0:
            raise ValueError(f"gpus_per_client must be >= 0, got {self.gpus_per_client}")
        if self.num_cpus is not None and self.num_cpus < self.cpus_per_client:
            raise ValueError(f"num_cpus ({self.num_cpus}) must be >= cpus_per_client ({self.cpus_per_client})")
        if self.address is not None and self.num_cpus is not None:
            raise ValueError("a Ray cluster has its own CPUs: give num_cpus only without a cluster address")

    def env(self, temp_dir: str) -> dict[str, str]:
        """Environment of the simulation SuperLink (its `flwr-simulation` and Ray inherit it)."""
        if self.address:
            return {**CLUSTER_RAY_ENV, "RAY_ADDRESS": self.address}
        return {**LOCAL_RAY_ENV, "RAY_TMPDIR": temp_dir}

    def simulation_config(self, nodes: int) -> list[str]:
        """Arguments of ``flwr federation simulation-config``: `nodes` virtual SuperNodes on this Ray."""
        args = ["--num-supernodes", str(nodes), "--backend-name", "ray"]
        args += ["--client-resources-num-cpus", str(self.cpus_per_client)]
        args += ["--client-resources-num-gpus", f"{self.gpus_per_client:g}"]
        if not self.address:
            args += ["--init-args-num-cpus", str(self.num_cpus or local_cpus())]
            if not self.gpus_per_client:  # else Ray counts this machine's GPUs itself
                args += ["--init-args-num-gpus", "0"]
        return args
