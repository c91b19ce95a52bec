"""What the test modules share: tiny configs, known-answer step helpers, tiny clients and models, checks of
finished runs. Fixtures live in conftest.py; a test module imports helpers from here, never from another
test module (nor from conftest, which pytest may have loaded twice under one name).

Lightning and the package's modules are imported inside the functions that use them: a server process of
test_distributed.py imports this module and must never import Lightning."""

from __future__ import annotations

import copy
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
# every method, one per configs/algorithm/*.yaml (variants included): a new YAML joins the tests over all of them
ALGORITHMS = sorted(path.stem for path in (ROOT / "configs" / "algorithm").glob("*.yaml"))

# Where the device-sensitive tests run (the ``device`` fixture): the CPU; off_cpu, a device emulated on the CPU
# that refuses CPU tensors (tests/off_cpu.py), so a tensor made without a device fails without a GPU too; and
# CUDA where a GPU is visible (scripts/gpu_check.sh runs them there).
DEVICES = ["cpu", "off_cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Tiny but complete: synthetic images, 3 clients, 2 rounds, a 2-layer supernet.
TINY = [
    "dataset=synthetic",
    "federation.num_clients=3",
    "federation.rounds=2",
    "federation.client_fraction=1.0",
    "federation.local_batches=2",
    "federation.batch_size=8",
    "federation.global_test_samples=null",
    "federation.client_eval_every=1",
    "federation.eval_batch_size=64",
    "partition.min_client_size=5",
    "plots_every=null",  # drawing costs seconds; the tests that check figures turn it on
    # in-process: these runs are a second of client work, and starting cluster=auto's worker processes
    # costs more (the tests of the workers, test_distributed.py, ask for them)
    "cluster=local",
]
# the fixed network of the fixed-network methods' runs (they need one; the supernet methods ignore it)
SMALL_CNN = ["model=cnn", "model.channels=[4,8]", "model.hidden=16"]


def compose_config(config_name: str, tmp_path: Path, overrides: list[str] = (), run: str = "run0") -> DictConfig:
    """A composed config whose every path lies under ``tmp_path``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=[
            *TINY,
            f"paths.root_dir={tmp_path}",
            f"paths.output_dir={tmp_path}/{config_name}/runs/{run}",
            *overrides,
        ])
    return cfg


def load_script(name: str) -> ModuleType:
    """A script of scripts/ as a module, so its main() runs in-process (a subprocess re-imports torch)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- finished runs ----------------------------------------------------------------------------------

@dataclass
class FinishedRun:
    """A run's config and what ``run_search`` returned; its last checkpoint read on demand."""

    cfg: DictConfig
    final: dict

    @property
    def run_dir(self) -> Path:
        return Path(self.final["run_dir"])

    @property
    def checkpoint(self) -> dict:
        from federated_nas.federation.checkpoint import load_latest_checkpoint

        return load_latest_checkpoint(self.run_dir / "checkpoints")


# A task every method learns in 2 rounds, in seconds (on top of TINY; tests/methods/test_every_method_learns.py
# says what each reaches): more data, 10 local steps a round at a larger lr; near-IID clients (Dirichlet 1000),
# whose local test splits hold every class alike, so that chance is 1 / num_classes for the personalized
# accuracies too; the DARTS cell cut to 2 nodes of 4 ops, for cheaper steps; a CNN wide enough to learn in 20
# steps (SMALL_CNN stays near chance at some seeds).
LEARNABLE = [
    "dataset.train_per_class=150",
    "dataset.test_per_class=25",
    "partition.alpha=1000",
    "federation.local_batches=10",
    "algorithm.lr=0.1",
    "search_space.steps=2",
    "search_space.multiplier=2",
    "++search_space.primitives=[max_pool_3x3,skip_connect,sep_conv_3x3,dil_conv_3x3]",
    "model=cnn",
    "model.channels=[16,32]",
    "model.hidden=64",
]
# where a method's defaults do not fit these short rounds
LEARNABLE_FOR = {
    "fedrep": ["algorithm.head_steps=2"],  # its 10 head steps would take every local step: the body never trains
}


def learning_run(name: str, tmp_path: Path) -> FinishedRun:
    """configs/algorithm/<name>.yaml for 2 rounds on the LEARNABLE task, with personalize=true where the method
    defines a personalization."""
    from federated_nas.algorithms.core.base import FederatedAlgorithm
    from federated_nas.runs import build, run_search

    cfg = compose_config("search", tmp_path, [f"algorithm={name}", "logger=none", *LEARNABLE,
                                              *LEARNABLE_FOR.get(name, [])])
    cfg.personalize = type(build(cfg.algorithm)).adapt is not FederatedAlgorithm.adapt
    return FinishedRun(cfg, run_search(cfg))


def adapt_task(client, batch_size: int, seed: int, personal: dict | None = None):
    """The ``ClientTask`` a method's ``adapt`` gets for ``client`` after the rounds, with its own ``seed``."""
    from federated_nas.algorithms.core.base import personalization_task

    return personalization_task(client, batch_size, 0, 1, seed, personal)


def initial_fixed_network(cfg: DictConfig) -> nn.Module:
    """The server's initial model of a fixed-network run, built as FederatedRun builds it (the synthetic data
    set: 1 channel, 4 classes)."""
    from federated_nas.runs import build

    torch.manual_seed(cfg.seed)
    return build(cfg.algorithm).model_factory(in_channels=1, num_classes=4)


def crash_then_resume(make_cfg, overrides: list[str], monkeypatch, resume_overrides: list[str] = ()) -> dict:
    """Run a search that dies right after round 0 is checkpointed, then ``resume=true`` it (with
    ``resume_overrides`` added)."""
    from federated_nas.federation import server
    from federated_nas.runs import run_search

    real_record = server.FederatedRun._record

    def crash_after_first_round(self, round_idx, metrics):
        real_record(self, round_idx, metrics)
        if round_idx == 0:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(server.FederatedRun, "_record", crash_after_first_round)
    with pytest.raises(KeyboardInterrupt):
        run_search(make_cfg("search", overrides + ["run_name=crashy"], run="first"))
    monkeypatch.setattr(server.FederatedRun, "_record", real_record)
    return run_search(make_cfg("search", [*overrides, "run_name=crashy", "resume=true", *resume_overrides],
                               run="second"))


def assert_same_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def assert_same_checkpoints(straight: dict, resumed: dict) -> tuple[dict, dict]:
    """The last checkpoints of two runs hold the same global model, server state and per-client state.

    Returns (straight's, resumed's) checkpoints for further checks.
    """
    from federated_nas.federation.checkpoint import load_latest_checkpoint

    expected, got = (load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints") for final in (straight, resumed))
    assert_same_states(got["model"], expected["model"])
    assert_same_states(*({k: torch.as_tensor(v) for k, v in c.get("algorithm_state", {}).items()}
                         for c in (got, expected)))
    assert got["personal"].keys() == expected["personal"].keys()
    for client_id, state in expected["personal"].items():
        assert_same_states(got["personal"][client_id], state)
    return expected, got


def assert_real_image(path: Path) -> None:
    import matplotlib.image  # matplotlib: only where an image is read

    assert path.is_file()
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


# --- known-answer local steps ---------------------------------------------------------------------

SGD = functools.partial(torch.optim.SGD)


class Batches:
    """A loader of the given batches, in order (a plain list would be read as a list of loaders)."""

    def __init__(self, batches):
        self.batches = list(batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def run_steps(module, batches, device: torch.device | str = "cpu") -> None:
    """``len(batches)`` local steps of ``module`` through a Trainer on ``device`` (the model is back on the CPU
    after it)."""
    from federated_nas.federation.backends import no_srun_hint
    from off_cpu import trainer_on  # Lightning: imported where used

    trainer = trainer_on(device, max_epochs=1, limit_train_batches=len(batches), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    with no_srun_hint():  # as LocalBackend's client fits: no SLURM hint where srun is installed
        trainer.fit(module, train_dataloaders=Batches(batches))


def run_one_step(module, batch, device: torch.device | str = "cpu") -> None:
    """One local step of ``module`` through a Trainer on ``device``."""
    run_steps(module, [batch], device)


def tiny_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)


def grads(model, batch, params):
    x, y = (t.to(params[0].device) for t in batch)
    found = torch.autograd.grad(F.cross_entropy(model(x), y), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(found, params)]  # unused: zero gradient


def sgd_by_hand(model: nn.Module, batch, params: list[nn.Parameter], lr: float) -> None:
    found = grads(model, batch, params)
    with torch.no_grad():
        for param, grad in zip(params, found):
            param.sub_(lr * grad)


# --- tiny models and clients ----------------------------------------------------------------------

def headed_model() -> nn.Sequential:
    """Body: Flatten + Linear(64, 5) + ReLU; head: the last Linear, named "3"."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 3))


def shifted(model: nn.Module, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """The model's state moved away from it: a personal state that differs from the received model."""
    return {name: value + scale * torch.randn_like(value) for name, value in model.state_dict().items()}


def factory_of(model: nn.Module):
    """A model factory (what a fixed-network method is built with) that returns copies of ``model``."""
    return lambda **_: copy.deepcopy(model)


def linear_model() -> nn.Sequential:
    """Flatten + Linear(64, 3), seeded: the fixed network of the known-answer steps on tiny batches."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def tiny_split(seed: int) -> TensorDataset:
    """``tiny_batch(seed)`` as a data set: 6 samples, one batch."""
    return TensorDataset(*tiny_batch(seed))


def client_of(train: TensorDataset, val: TensorDataset | None = None):
    """Client 0 with these train (and val) splits; the splits not given are empty."""
    from federated_nas.data.federated_data import ClientData

    empty = TensorDataset(train.tensors[0][:0], train.tensors[1][:0])
    return ClientData(0, train, val if val is not None else empty, empty)


def client_with(samples: int, seed: int = 0):
    """Client 0 with ``samples`` random training samples of 3 classes, its val and test splits empty."""
    g = torch.Generator().manual_seed(seed)
    return client_of(TensorDataset(torch.randn(samples, 1, 8, 8, generator=g),
                                   torch.randint(0, 3, (samples,), generator=g)))


def first_of_one_round(samples: int):
    """A client's task in round 0 of 1 (the lr schedule's start), with nothing kept from before."""
    from federated_nas.algorithms.core.base import ClientTask, RoundPlan

    return ClientTask(client_with(samples), RoundPlan(0, 1, 0, 1, None, 4), 0)


def tiny_client(client_id: int, seed: int):
    """A client with 8 random samples of 3 classes in each of its train, val and test splits."""
    from federated_nas.data.federated_data import ClientData

    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> TensorDataset:
        return TensorDataset(torch.randn(n, 1, 8, 8, generator=generator),
                             torch.randint(0, 3, (n,), generator=generator))

    return ClientData(client_id, split(8), split(8), split(8))


TINY_DATA = SimpleNamespace(in_channels=1, num_classes=3, image_size=8, input_shape=(1, 8, 8))


def tiny_rl_algorithm(method: type | None = None, **options):
    """FedRLNAS (or its subclass ``method``) on two ops (avg_pool, sep_conv) and one node: 2 edges per cell
    kind; alpha starts uniform. Returns (algorithm, model)."""
    from federated_nas.algorithms.nas.fedrlnas import FedRLNAS
    from federated_nas.search_space.supernet import SearchNetwork

    space = functools.partial(SearchNetwork, C=2, layers=1, steps=1, multiplier=1,
                              primitives=("avg_pool_3x3", "sep_conv_3x3"))
    algorithm = (method or FedRLNAS)(space, functools.partial(torch.optim.SGD), **options)
    torch.manual_seed(0)
    model = algorithm.build_model(TINY_DATA)
    with torch.no_grad():
        model.alpha_normal.zero_()
        model.alpha_reduce.zero_()
    return algorithm, model
