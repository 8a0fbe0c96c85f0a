"""The seed paper's pipeline, as the paper describes it: the reference ``fedcifar bench`` beats.

* a ``ThreadPoolExecutor`` with 4 workers trains the sampled clients;
* each client reads a torchvision ``DataLoader`` over PIL images with per-image transforms
  (random crop, flip, ToTensor, Normalize);
* each client starts from ``copy.deepcopy`` of the global model and returns a deepcopy of
  its ``state_dict``;
* training is plain fp32 with torch's default thread count;
* the server averages the state dicts, weighted by client data size (FedAvg).

It trains the same workload (partition, per-round clients, epochs, Adam, batch size) as the
other implementations: ``python src/fedcifar/bench/peers/paper_style.py WORKLOAD.json OUT.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from fedcifar.bench.workload import Workload, measured
from fedcifar.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD, resolve_data_dir
from fedcifar.model.resnet import build_model

WORKERS = 4


def client_update(global_model: nn.Module, dataset, indices: np.ndarray, w: Workload):
    model = copy.deepcopy(global_model)
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=w.batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=w.lr)
    criterion = nn.CrossEntropyLoss()
    model.train()
    images = steps = 0
    epoch = 0
    while epoch < w.local_epochs or w.local_steps:
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            images += len(y)
            steps += 1
            if steps == w.local_steps:  # the workload's optional cap on minibatches
                return copy.deepcopy(model.state_dict()), len(indices), images
        epoch += 1
    return copy.deepcopy(model.state_dict()), len(indices), images


def average(states: list[dict], sizes: list[int]) -> dict:
    total = sum(sizes)
    out = {}
    for key in states[0]:
        avg = sum(s[key].float() * (n / total) for s, n in zip(states, sizes, strict=True))
        out[key] = avg.to(states[0][key].dtype)
    return out


def run(w: Workload) -> dict:
    train_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )
    dataset = datasets.CIFAR100(str(resolve_data_dir(w.data_dir or None)), train=True, transform=train_tf)
    partition = w.partition(np.asarray(dataset.targets))
    global_model = build_model(seed=w.seed)
    walls, images = [], []
    for clients in w.schedule():
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = list(pool.map(lambda c: client_update(global_model, dataset, partition[c], w), clients))
        states, sizes, trained = zip(*results, strict=True)
        global_model.load_state_dict(average(list(states), list(sizes)))
        walls.append(time.perf_counter() - t0)
        images.append(sum(trained))
        print(f"paper-style round {len(walls)}: {walls[-1]:.1f}s, {images[-1] / walls[-1]:.1f} img/s", flush=True)
    keep = measured(list(range(len(walls))))
    return {
        "impl": "paper-style",
        "runtime": f"cpu, fp32, NCHW, ThreadPoolExecutor({WORKERS}) x {torch.get_num_threads()} thread(s)",
        "precision": "fp32",
        "round_seconds": walls,
        "train_images": images,
        "seconds_per_round": statistics.median(walls[i] for i in keep),
        "images_per_sec": sum(images[i] for i in keep) / sum(walls[i] for i in keep),
        "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    result = run(Workload.load(args.workload))
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
