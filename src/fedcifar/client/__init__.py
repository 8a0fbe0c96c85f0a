"""The client side of federated learning, independent of any engine."""

from fedcifar.client.evaluate import EvalCounts, eval_counts
from fedcifar.client.train import train_client

__all__ = ["EvalCounts", "eval_counts", "train_client"]
