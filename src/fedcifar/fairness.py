"""Per-client fairness of a global model, from one pass over the test set.

A client's accuracy is estimated on a test distribution that matches its own label mix:
acc_k = sum_c p_k(c) * acc_c, where p_k is the client's training label distribution and acc_c
the global model's accuracy on test class c. This reweights the shared test set; it does not
test a client on its own data (CIFAR-100's test set has no clients), and it sees label skew
only, not any feature shift between clients.
"""

from __future__ import annotations

import numpy as np

FAIRNESS_COLUMNS = ("client_acc_mean", "client_acc_p10", "client_acc_min", "client_acc_std")


def client_accuracies(label_counts: np.ndarray, class_acc: np.ndarray) -> np.ndarray:
    """(clients,) accuracy of each client's label mix; classes absent from the test set are left out.

    A client holding only classes that the test set lacks (possible only with ``eval_limit``)
    gets NaN.
    """
    counts = np.asarray(label_counts, dtype=np.float64)
    acc = np.asarray(class_acc, dtype=np.float64)
    present = ~np.isnan(acc)
    weights = counts[:, present]
    totals = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, weights @ acc[present] / totals, np.nan)


def fairness_summary(client_acc: np.ndarray) -> dict[str, float]:
    """Mean, 10th percentile (linear interpolation), minimum and population std over clients."""
    acc = np.asarray(client_acc, dtype=np.float64)
    acc = acc[~np.isnan(acc)]
    if acc.size == 0:
        return dict.fromkeys(FAIRNESS_COLUMNS, float("nan"))
    return {
        "client_acc_mean": float(acc.mean()),
        "client_acc_p10": float(np.percentile(acc, 10)),
        "client_acc_min": float(acc.min()),
        "client_acc_std": float(acc.std()),
    }
