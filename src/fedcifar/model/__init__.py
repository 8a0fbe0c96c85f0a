"""Models."""

from fedcifar.model.resnet import ARCHITECTURES, build_model
from fedcifar.model.spec import ModelSpec, ModelSpecError

__all__ = ["ARCHITECTURES", "ModelSpec", "ModelSpecError", "build_model"]
