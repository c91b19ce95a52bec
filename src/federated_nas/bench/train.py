"""FedAvg of one benchmark architecture, fast enough to train every architecture of the space.

Why not the project's loop: a run there sets up a Lightning Trainer per client fit, MLflow and
checkpoints, seconds per architecture that a 648-architecture table cannot afford. This is the
same algorithm as ``algorithm=fedavg model=genotype`` (the FedNAS train stage) in plain torch,
in one process: SGD with momentum 0.9 and weight decay 3e-4, a cosine learning rate over the
rounds, gradient clipping at norm 5, fresh optimizer state for every client fit, weights and
BatchNorm statistics averaged by client train size. The network is ``GenotypeNetwork``, the one
``src/train.py`` trains, so a looked-up accuracy is that of the architecture a search derives.

Everything random (the network's initial weights, a client's batches, and with
``client_schedule="per_seed"`` the clients of a round) is a function of ``(seed, round, client)``, so a
result depends on (architecture, seed, split) alone and a build can resume or spread over processes in
any order. By default the clients of each round are the same for every seed: under Dirichlet 0.1, which
clients trained last moves the global accuracy by several points, a noise that would swamp the
architectures' differences (the pilots in docs/bench.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from federated_nas.data.datasets import ImageDataset
from federated_nas.data.federated_data import FederatedData, build_federated_data
from federated_nas.data.partitions import DirichletPartitioner, IIDPartitioner
from federated_nas.errors import ConfigError
from federated_nas.models.budget import count_parameters
from federated_nas.search_space.genotypes import Genotype
from federated_nas.search_space.network import GenotypeNetwork


@dataclass(frozen=True)
class Budget:
    """The training budget of every architecture: what a pilot sizes (docs/bench.md)."""

    rounds: int = 10
    clients_per_round: int = 5
    local_steps: int = 10  # batches per client per round
    batch_size: int = 32
    lr: float = 0.05  # the pilots' (docs/bench.md): 0.025 left 10 rounds further from their plateau
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    test_samples: int | None = None  # the first N global test images (None: all 10,000)
    # which clients take part in each round: "fixed" (the same schedule for every seed: a property of the
    # federation, like its split) or "per_seed" (drawn anew with each training seed)
    client_schedule: str = "fixed"
    # global_acc: the mean global test accuracy of the last N rounds' models (what FL papers report where
    # non-IID rounds oscillate); 1: the final model's alone
    average_last: int = 1

    def __post_init__(self):
        for name in ("rounds", "clients_per_round", "local_steps", "batch_size", "average_last"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"bench budget {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.average_last > self.rounds:
            raise ConfigError(f"bench budget average_last={self.average_last} is more than its {self.rounds} rounds")
        if self.client_schedule not in ("fixed", "per_seed"):
            raise ConfigError(f"bench budget client_schedule must be fixed or per_seed, got {self.client_schedule!r}")
        if self.test_samples is not None and self.test_samples < 1:
            raise ConfigError(f"bench budget test_samples must be >= 1 or None, got {self.test_samples}")


@dataclass(frozen=True)
class NetworkShape:
    """The benchmark network's macro-architecture: the CPU preset's (``preset=cpu``), so a search at that
    preset derives a genotype that ``src/train.py`` trains at exactly this shape."""

    C: int = 4
    layers: int = 3
    stem_multiplier: int = 3
    stem_stride: int = 2


@dataclass(frozen=True)
class SplitSpec:
    """One fixed federated split: ``dir<alpha>`` (Dirichlet) or ``iid``, over ``num_clients`` clients.

    The partition seed is fixed, not the training seed: every architecture and seed sees the same clients.
    ``fractions`` are search.yaml's (train, val, test): the clients a search of the same split would have.
    """

    name: str
    num_clients: int = 10
    partition_seed: int = 0
    fractions: tuple[float, ...] = (0.45, 0.45, 0.1)
    min_client_size: int = 10

    def partitioner(self):
        if self.name == "iid":
            return IIDPartitioner()
        if self.name.startswith("dir"):
            try:
                alpha = float(self.name[3:])
            except ValueError:
                alpha = float("nan")
            if alpha > 0:
                return DirichletPartitioner(alpha, self.min_client_size)
        raise ConfigError(f"bench split {self.name!r}: use iid or dir<alpha> (e.g. dir0.1)")


def build_split(dataset: ImageDataset, split: SplitSpec) -> FederatedData:
    """The clients of a split, by the project's own partition and split code."""
    return build_federated_data(dataset, split.partitioner(), split.num_clients, split.partition_seed,
                                split.fractions)


def build_network(genotype: Genotype, data: FederatedData, shape: NetworkShape) -> GenotypeNetwork:
    return GenotypeNetwork(genotype, data.in_channels, data.num_classes, shape.C, shape.layers,
                           shape.stem_multiplier, shape.stem_stride)


def forward_flops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one one-sample forward pass, as ``torch.utils.flop_counter`` counts them (2 per multiply-add):
    the convention of the searches' ``supernet_flops``."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros((1, *input_shape)))
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def _generator(*parts: int) -> torch.Generator:
    """A torch generator seeded by a tuple of ints (numpy's SeedSequence mixes them)."""
    seed = int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def round_clients(seed: int, round_idx: int, num_clients: int, per_round: int) -> list[int]:
    """The clients of a round: a function of (seed, round) only."""
    order = torch.randperm(num_clients, generator=_generator(seed, round_idx, 7))
    return sorted(order[:min(per_round, num_clients)].tolist())


def client_batches(size: int, steps: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` batches of indices into a client's train split: epochs of shuffled order, as many as needed."""
    needed = steps * batch_size
    order = torch.cat([torch.randperm(size, generator=generator) for _ in range(math.ceil(needed / size))])
    return list(order[:needed].view(steps, batch_size))


def _cosine_lr(budget: Budget, round_idx: int) -> float:
    progress = round_idx / budget.rounds
    return budget.lr_min + 0.5 * (budget.lr - budget.lr_min) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Per-sample correctness (bool) of ``model`` in eval mode."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size] for i in range(0, len(y), batch_size)])


@dataclass
class TrainResult:
    """One (architecture, seed, split) of the table."""

    global_acc: float  # the global test set (its first ``test_samples``), mean of the last ``average_last`` rounds
    client_acc_mean: float  # each client's local test split, unweighted mean over clients
    client_acc_std: float
    params: int
    flops: int
    train_seconds: float
    eval_seconds: float
    final_loss: float  # mean train loss of the last round
    round_loss: list[float] = field(default_factory=list)
    val_acc: float | None = None  # the clients' val splits pooled (``validate=True``: random search's pick)
    round_global_acc: list[float] = field(default_factory=list)  # the last ``average_last`` rounds' models

    def as_dict(self) -> dict:
        return asdict(self)


def train_fedavg(genotype: Genotype, data: FederatedData, budget: Budget, shape: NetworkShape, seed: int,
                 validate: bool = False, order_seed: int | None = None, test: bool = True) -> TrainResult:
    """FedAvg of ``genotype``'s network on ``data`` (module docstring); deterministic per (genotype, seed, data).
    ``validate``: also score the clients' val splits, the data a search may choose on (never the test sets).
    ``order_seed``: the clients' batch order from another seed than the initial weights' (None: ``seed``), to
    tell the two sources of seed noise apart (``scripts/bench_seed_noise.py --vary``).
    ``test=False``: no test set is scored (the accuracies are NaN): a search that picks on val pays for no test pass."""
    torch.manual_seed(int(np.random.SeedSequence([seed, 11]).generate_state(1)[0]))  # the initial weights
    model = build_network(genotype, data, shape)
    params, flops = count_parameters(model), forward_flops(model, data.input_shape)
    started = time.perf_counter()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = [client.num_samples for client in data.clients]
    round_loss, round_accs, eval_seconds = [], [], 0.0
    test_x, test_y = data.global_test.tensors
    if budget.test_samples is not None:
        test_x, test_y = test_x[:budget.test_samples], test_y[:budget.test_samples]
    for round_idx in range(budget.rounds):
        lr = _cosine_lr(budget, round_idx)
        schedule_seed = seed if budget.client_schedule == "per_seed" else 0
        chosen = round_clients(schedule_seed, round_idx, len(data.clients), budget.clients_per_round)
        total = float(sum(sizes[k] for k in chosen))
        summed = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        losses = []
        for k in chosen:
            model.load_state_dict(global_state)
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=budget.momentum,
                                        weight_decay=budget.weight_decay)
            x_all, y_all = data.clients[k].train.tensors
            for batch in client_batches(len(y_all), budget.local_steps, budget.batch_size,
                                        _generator(seed if order_seed is None else order_seed, round_idx, k)):
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x_all[batch]), y_all[batch])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), budget.grad_clip)
                optimizer.step()
                losses.append(loss.item())
            weight = sizes[k] / total
            for name, value in model.state_dict().items():
                summed[name] += weight * value.double()
        # floats: the weighted mean; counters (BatchNorm's num_batches_tracked): rounded the same way
        global_state = {name: (value.round() if not global_state[name].is_floating_point() else value)
                        .to(global_state[name].dtype) for name, value in summed.items()}
        round_loss.append(float(np.mean(losses)))
        if test and round_idx >= budget.rounds - budget.average_last:
            model.load_state_dict(global_state)
            evaluating = time.perf_counter()
            round_accs.append(float(accuracy(model, test_x, test_y).double().mean()))
            eval_seconds += time.perf_counter() - evaluating
    trained = time.perf_counter()
    model.load_state_dict(global_state)  # the final model, whether or not a round's evaluation loaded it
    global_acc = float(np.mean(round_accs)) if test else math.nan
    client_accs = [float(accuracy(model, *client.test.tensors).double().mean()) for client in data.clients
                   if test and len(client.test)] or [math.nan]
    val_acc = None
    if validate:
        correct = [accuracy(model, *client.val.tensors) for client in data.clients if len(client.val)]
        val_acc = float(torch.cat(correct).double().mean())
    return TrainResult(global_acc=global_acc, client_acc_mean=float(np.mean(client_accs)),
                       client_acc_std=float(np.std(client_accs)), params=params, flops=flops,
                       train_seconds=trained - started - eval_seconds,
                       eval_seconds=eval_seconds + time.perf_counter() - trained,
                       final_loss=round_loss[-1], round_loss=round_loss, val_acc=val_acc, round_global_acc=round_accs)
