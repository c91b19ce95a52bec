"""Server aggregation on hand-made states with known weighted means."""

from __future__ import annotations

import pytest
import torch

from federated_nas.algorithms.core.aggregation import WeightedAverage, weighted_average
from federated_nas.errors import DataError
from federated_nas.federation.server import sample_clients


def state(w, alpha, count):
    return {"w": torch.tensor(w), "alpha": torch.tensor(alpha), "bn.num_batches_tracked": torch.tensor(count)}


def test_weighted_mean_of_weights_alphas_and_counters():
    # client sizes 1 and 3: weights 1/4 and 3/4 over the clients that reported
    result = weighted_average([state([0.0, 4.0], [1.0], 10), state([4.0, 8.0], [-1.0], 20)], [1, 3])
    torch.testing.assert_close(result["w"], torch.tensor([3.0, 7.0]))
    torch.testing.assert_close(result["alpha"], torch.tensor([-0.5]))  # averaged, not client 0's
    assert result["bn.num_batches_tracked"].dtype == torch.int64
    assert int(result["bn.num_batches_tracked"]) == round(0.25 * 10 + 0.75 * 20)


def test_weights_are_normalised_over_participants_only():
    # three equal clients report; the mean does not depend on how many clients exist in total
    states = [state([float(v)], [0.0], 0) for v in (1, 2, 6)]
    torch.testing.assert_close(weighted_average(states, [5, 5, 5])["w"], torch.tensor([3.0]))


def test_streaming_average_counts_clients():
    average = WeightedAverage(state([0.0], [0.0], 0))
    average.add(state([2.0], [1.0], 0), 2)
    assert average.count == 1 and average.total_weight == 2
    torch.testing.assert_close(average.result()["w"], torch.tensor([2.0]))


@pytest.mark.parametrize("bad, message", [
    ({"w": torch.tensor([float("nan")]), "alpha": torch.tensor([0.0]),
      "bn.num_batches_tracked": torch.tensor(0)}, "NaN"),
    ({"w": torch.tensor([1.0, 2.0]), "alpha": torch.tensor([0.0]),
      "bn.num_batches_tracked": torch.tensor(0)}, "expected"),
    ({"w": torch.tensor([1.0])}, "keys differ"),
])
def test_bad_updates_are_rejected_with_one_line(bad, message):
    average = WeightedAverage(state([0.0], [0.0], 0))
    with pytest.raises(DataError, match=message):
        average.add(bad, 1)
    assert average.count == 0


def test_empty_round_cannot_be_aggregated():
    with pytest.raises(DataError, match="no client update"):
        WeightedAverage(state([0.0], [0.0], 0)).result()


def test_client_sampling_is_deterministic_and_sized():
    chosen = sample_clients(seed=3, round_idx=7, num_clients=10, fraction=0.5)
    assert chosen == sample_clients(3, 7, 10, 0.5)
    assert len(chosen) == 5 and len(set(chosen)) == 5
    assert sample_clients(3, 7, 10, 1.0) == list(range(10))
    assert any(sample_clients(3, r, 10, 0.5) != chosen for r in range(8, 12))
