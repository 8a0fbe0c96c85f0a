"""FedProx (Li et al. 2020): FedAvg on the server; the client adds (μ/2)||w - w_global||².

The proximal term is the client's job (``ClientInstructions.proximal_mu``, applied in
:mod:`fedcifar.client.hooks`); the strategy only asks for it. With μ = 0 it is FedAvg.
"""

from __future__ import annotations

from fedcifar.strategy.base import FitConfig, add_to_config
from fedcifar.strategy.fedavg import FedAvg
from fedcifar.strategy.weighting import Weighting


class FedProx(FedAvg):
    def __init__(self, proximal_mu: float, weighting: Weighting | None = None) -> None:
        super().__init__(weighting)
        self.proximal_mu = proximal_mu

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        config = super().configure_fit(server_round, client_ids)
        return add_to_config(config, client_ids, proximal_mu=self.proximal_mu)
