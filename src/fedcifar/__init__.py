"""fedcifar: federated learning on CIFAR-100, from simulation to a served model."""

__version__ = "0.1.0"
