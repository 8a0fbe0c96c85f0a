"""Preloaded into the forkserver of ``tests/test_crash_safety.py``, never into pytest's process.

It imports fedcifar and loads CIFAR-100 once, so each ``fedcifar train`` forked from the
server starts in milliseconds instead of paying the imports and the data load (about 5 s
of CPU together) 41 times. The children run the real CLI; only ``load_cifar100`` hands
them the preloaded tensors (fork shares them copy-on-write).
"""

from __future__ import annotations

import threading

import tqdm

import fedcifar.cli  # noqa: F401
import fedcifar.sim.engine  # noqa: F401
from fedcifar.data import cifar100

DATA = cifar100.load_cifar100(download=False)
cifar100.load_cifar100 = lambda *_args, **_kwargs: DATA
# tqdm takes its lock in every tqdm() (even a disabled one). Its default lock holds a
# multiprocessing semaphore: made here, every forked child would share it, and a child
# SIGKILLed while holding it would block every later child forever; made in each child, the
# semaphore of a killed child is reported as leaked when pytest exits. A thread lock is
# enough (each run is one process) and each child gets its own copy.
tqdm.tqdm.set_lock(threading.RLock())
