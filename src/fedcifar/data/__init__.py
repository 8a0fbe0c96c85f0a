"""CIFAR-100 in memory, client partitions and batch augmentation."""

from fedcifar.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD, Cifar100, DataError, load_cifar100

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "Cifar100", "DataError", "load_cifar100"]
