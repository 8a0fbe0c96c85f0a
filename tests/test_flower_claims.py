"""The Flower server checks what SuperNodes say about their data, instead of trusting it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from fedcifar.flower.backend import NodesMisreport, check_claims  # noqa: E402
from fedcifar.strategy.population import Population  # noqa: E402

EXPECTED = Population(np.array([3, 5]), np.array([[1, 2], [5, 0]]))


def test_claims_that_match_the_partition_pass():
    check_claims(Population(EXPECTED.sizes.copy(), EXPECTED.label_counts.copy()), EXPECTED)


def test_a_node_claiming_a_billion_examples_is_refused_in_one_line():
    claimed = Population(np.array([3, 10**9]), EXPECTED.label_counts)
    with pytest.raises(NodesMisreport, match=r"^client 1's SuperNode claims 1000000000 examples; .* gives it 5: "):
        check_claims(claimed, EXPECTED)


def test_a_node_claiming_other_labels_of_the_right_size_is_refused():
    claimed = Population(EXPECTED.sizes, np.array([[1, 2], [4, 1]]))
    with pytest.raises(NodesMisreport, match="client 1's SuperNode claims other label counts"):
        check_claims(claimed, EXPECTED)
