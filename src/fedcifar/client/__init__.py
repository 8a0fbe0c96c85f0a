"""The client side of federated learning, independent of any engine."""

from fedcifar.client.train import ClientInstructions, ClientResult, evaluate, train_client

__all__ = ["ClientInstructions", "ClientResult", "evaluate", "train_client"]
