"""Partitioners and per-client splits: completeness, determinism, heterogeneity, saved artifacts."""

import csv
import json

import numpy as np
import pytest

from federated_nas.data import (
    DirichletPartitioner,
    IIDPartitioner,
    LabelSkewPartitioner,
    build_federated_data,
    class_counts,
    make_synthetic_dataset,
)
from federated_nas.errors import ConfigError

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """10 classes x 500 samples, shuffled so class membership is not contiguous."""
    rng = np.random.default_rng(123)
    return rng.permutation(np.repeat(np.arange(NUM_CLASSES), 500))


ALL_PARTITIONERS = [
    pytest.param(IIDPartitioner(), id="iid"),
    pytest.param(DirichletPartitioner(alpha=0.5), id="dirichlet"),
    pytest.param(LabelSkewPartitioner(classes_per_client=2), id="label_skew"),
]


def mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    counts = class_counts(labels, parts, NUM_CLASSES).astype(float)
    shares = counts / counts.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(shares > 0, -shares * np.log(shares), 0.0)
    return float(terms.sum(axis=0).mean())


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS)
def test_parts_are_disjoint_complete_and_sorted(partitioner, labels):
    parts = partitioner(labels, 10, seed=0)
    assert len(parts) == 10
    joined = np.concatenate(parts)
    assert len(joined) == len(labels)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS)
def test_same_seed_same_parts_different_seed_different_parts(partitioner, labels):
    first = partitioner(labels, 10, seed=7)
    again = partitioner(labels, 10, seed=7)
    other = partitioner(labels, 10, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_dirichlet_heterogeneity_grows_as_alpha_shrinks(labels):
    skewed = mean_label_entropy(labels, DirichletPartitioner(alpha=0.1)(labels, 10, seed=0))
    near_iid = mean_label_entropy(labels, DirichletPartitioner(alpha=100.0)(labels, 10, seed=0))
    assert skewed < near_iid
    assert near_iid > 0.95 * np.log(NUM_CLASSES)


def test_dirichlet_respects_min_client_size(labels):
    parts = DirichletPartitioner(alpha=0.1, min_client_size=200)(labels, 10, seed=3)
    assert min(len(part) for part in parts) >= 200


def test_dirichlet_gives_up_with_config_error_when_min_size_is_unreachable():
    few_labels = np.repeat(np.arange(2), 10)
    with pytest.raises(ConfigError, match="partition.min_client_size"):
        DirichletPartitioner(alpha=0.01, min_client_size=4, max_retries=3)(few_labels, 5, seed=0)
    with pytest.raises(ConfigError, match="partition.min_client_size"):
        DirichletPartitioner(min_client_size=10)(few_labels, 3, seed=0)


def test_label_skew_gives_tau_classes_with_equal_counts(labels):
    tau = 3
    parts = LabelSkewPartitioner(classes_per_client=tau)(labels, 10, seed=0)
    counts = class_counts(labels, parts, NUM_CLASSES)
    assert np.all((counts > 0).sum(axis=0) == tau)
    assert np.all((counts > 0).sum(axis=1) >= 1)  # every class is used
    for client_counts in counts.T:
        held = client_counts[client_counts > 0]
        assert held.max() - held.min() <= 500 // 3 + 1  # per-class shares differ only by holder count


def test_label_skew_splits_each_class_evenly_among_holders(labels):
    # 10 clients x 2 classes over 10 classes: every class is held by exactly 2 clients.
    parts = LabelSkewPartitioner(classes_per_client=2)(labels, 10, seed=1)
    counts = class_counts(labels, parts, NUM_CLASSES)
    assert set(counts[counts > 0].tolist()) == {250}


def test_class_counts_shape_and_total(labels):
    parts = IIDPartitioner()(labels, 4, seed=0)
    counts = class_counts(labels, parts, NUM_CLASSES)
    assert counts.shape == (NUM_CLASSES, 4)
    assert counts.sum() == len(labels)
    assert np.array_equal(counts.sum(axis=1), np.full(NUM_CLASSES, 500))


def test_describe_names_partition_and_settings():
    assert IIDPartitioner().describe() == {"partition": "iid"}
    assert DirichletPartitioner(alpha=0.3).describe()["alpha"] == 0.3
    assert LabelSkewPartitioner(2).describe() == {"partition": "label_skew", "classes_per_client": 2}


@pytest.mark.parametrize(
    ("make_and_call", "setting"),
    [
        (lambda labels: DirichletPartitioner(alpha=0), "partition.alpha"),
        (lambda labels: DirichletPartitioner(alpha=-1.0), "partition.alpha"),
        (lambda labels: LabelSkewPartitioner(0), "partition.classes_per_client"),
        (lambda labels: LabelSkewPartitioner(11)(labels, 10, seed=0), "partition.classes_per_client"),
        (lambda labels: LabelSkewPartitioner(2)(labels, 3, seed=0), "partition.classes_per_client"),
        (lambda labels: IIDPartitioner()(labels, len(labels) + 1, seed=0), "federation.num_clients"),
        (lambda labels: IIDPartitioner()(labels, 0, seed=0), "federation.num_clients"),
        (lambda labels: DirichletPartitioner()(labels, 10**6, seed=0), "federation.num_clients"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_setting(make_and_call, setting, labels):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")) as info:
        make_and_call(labels)
    assert "\n" not in str(info.value)


# --- per-client splits -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_dataset(num_classes=4, train_per_class=40, test_per_class=10, seed=0)


def test_build_federated_data_splits_each_share(synthetic):
    data = build_federated_data(synthetic, IIDPartitioner(), num_clients=4, seed=0, split=(0.8, 0.1, 0.1))
    assert len(data.clients) == 4
    assert (data.num_classes, data.in_channels, data.image_size) == (4, 1, 8)
    assert len(data.global_test) == 40
    for client, share in zip(data.clients, data.partition):
        assert len(share) == 40
        assert (len(client.train), len(client.val), len(client.test)) == (32, 4, 4)
        assert client.num_samples == 32
        parts = [client.indices[name] for name in ("train", "val", "test")]
        joined = np.concatenate(parts)
        assert len(np.unique(joined)) == len(joined)  # train/val/test disjoint
        assert np.array_equal(np.sort(joined), share)
        images, labels = client.train.tensors
        assert np.array_equal(labels.numpy(), synthetic.train_y.numpy()[client.indices["train"]])
        assert images.shape == (32, 1, 8, 8)


def test_small_shares_still_get_one_sample_per_split(synthetic):
    data = build_federated_data(synthetic, IIDPartitioner(), num_clients=40, seed=0, split=(0.8, 0.1, 0.1))
    for client in data.clients:  # 4 samples each: 0.4 val / 0.4 test would round to 0
        assert (len(client.train), len(client.val), len(client.test)) == (2, 1, 1)


def test_split_with_zero_test_fraction(synthetic):
    data = build_federated_data(synthetic, IIDPartitioner(), num_clients=2, seed=0, split=(0.9, 0.1, 0.0))
    assert all(len(client.test) == 0 for client in data.clients)
    assert all(len(client.train) + len(client.val) == 80 for client in data.clients)


def test_a_fourth_fraction_holds_out_a_disjoint_split_no_loader_reads(synthetic):
    data = build_federated_data(synthetic, IIDPartitioner(), num_clients=4, seed=0, split=(0.6, 0.2, 0.1, 0.1))
    for client, share in zip(data.clients, data.partition):
        assert (len(client.train), len(client.val), len(client.test), len(client.holdout)) == (24, 8, 4, 4)
        joined = np.concatenate([client.indices[name] for name in ("train", "val", "test", "holdout")])
        assert np.array_equal(np.sort(joined), share)  # disjoint, and the whole share
    assert all(client.holdout is None for client in build_federated_data(synthetic, IIDPartitioner(), 4, 0).clients)


def test_build_is_deterministic_by_seed(synthetic):
    first = build_federated_data(synthetic, DirichletPartitioner(alpha=1.0, min_client_size=5), 4, seed=2)
    again = build_federated_data(synthetic, DirichletPartitioner(alpha=1.0, min_client_size=5), 4, seed=2)
    for a, b in zip(first.clients, again.clients):
        for name in ("train", "val", "test"):
            assert np.array_equal(a.indices[name], b.indices[name])


@pytest.mark.parametrize("split", [(0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), (0.8, 0.2)])
def test_bad_split_raises_config_error(synthetic, split):
    with pytest.raises(ConfigError, match=r"federation\.split"):
        build_federated_data(synthetic, IIDPartitioner(), 2, seed=0, split=split)


def test_save_partition_writes_json_and_csv(synthetic, tmp_path):
    data = build_federated_data(synthetic, LabelSkewPartitioner(2), num_clients=3, seed=0)
    paths = data.save_partition(tmp_path / "artifacts")
    names = sorted(path.name for path in paths)
    assert names == ["partition.json", "partition_counts.csv"]  # the run draws the heatmap (test_pipeline)
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths)
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == names  # no temp files left

    saved = json.loads((tmp_path / "artifacts" / "partition.json").read_text())
    assert [entry["client_id"] for entry in saved["clients"]] == [0, 1, 2]
    for entry, client in zip(saved["clients"], data.clients):
        assert entry["val"] == client.indices["val"].tolist()

    with open(tmp_path / "artifacts" / "partition_counts.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["class", "client_0", "client_1", "client_2"]
    table = np.array([[int(value) for value in row[1:]] for row in rows[1:]])
    assert np.array_equal(table, data.class_counts)
