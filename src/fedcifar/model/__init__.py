"""Models."""

from fedcifar.model.resnet import build_model

__all__ = ["build_model"]
