"""flowerbench: the model, the data and the local training, as in Flower's PyTorch quickstart.

The quickstart loads a partition with per-image transforms and trains with a plain fp32
PyTorch loop; so does this. Data come from the local CIFAR-100 files instead of Flower
Datasets (there is no hub here), partitioned exactly as the benchmark's workload says.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from fedcifar.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD, resolve_data_dir
from fedcifar.data.partition import make_partition
from fedcifar.model.resnet import build_model


def Net(seed: int = 0) -> nn.Module:  # noqa: N802 - the quickstart's name for the model
    return build_model(seed=seed)


pytorch_transforms = transforms.Compose(
    [
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
    ]
)


@cache
def _train_set(data_dir: str) -> datasets.CIFAR100:
    """Loaded once per Ray actor, like the quickstart's cached FederatedDataset."""
    return datasets.CIFAR100(str(resolve_data_dir(data_dir or None)), train=True, transform=pytorch_transforms)


@cache
def _partition(data_dir: str, num_clients: int, alpha: float, min_size: int, seed: int) -> list[np.ndarray]:
    labels = np.asarray(_train_set(data_dir).targets)
    return make_partition(labels, "dirichlet", num_clients, seed, alpha, min_partition_size=min_size)


def load_data(client_id: int, config) -> DataLoader:
    """The DataLoader of one client's partition."""
    data_dir = str(config["data-dir"])
    parts = _partition(
        data_dir,
        int(config["num-clients"]),
        float(config["alpha"]),
        int(config["min-partition-size"]),
        int(config["seed"]),
    )
    subset = Subset(_train_set(data_dir), parts[client_id].tolist())
    return DataLoader(subset, batch_size=int(config["batch-size"]), shuffle=True)


def train(
    net: nn.Module, trainloader: DataLoader, epochs: int, lr: float, device: torch.device, max_steps: int = 0
) -> tuple[float, int]:
    """Train the model on the training set; return the mean loss and the images trained.

    ``max_steps`` > 0 stops after that many minibatches instead (the workload's optional cap).
    """
    net.to(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    running_loss, images, steps = 0.0, 0, 0
    epoch = 0
    while epoch < epochs or max_steps:
        for x, y in trainloader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            images += len(y)
            steps += 1
            if steps == max_steps:
                return running_loss / steps, images
        epoch += 1
    return running_loss / max(steps, 1), images
