"""Type and range checks of every setting, run on the composed config before torch or data load.

A bad value then costs a second, not the 10-100 s of imports and data loading that come before
the objects that would notice it, and leaves nothing behind. The rules are a table of setting
patterns, so a new setting is one line here (``tests/test_config_checks.py`` fails until it has
one). Checks that need the data or other objects (a partition too fine for the dataset, a model
that cannot read the samples) stay with those objects. This module imports only OmegaConf.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from federated_nas.errors import ConfigError


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class Number:
    """A real (or integer) value in an interval; ``None`` allowed where ``nullable``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def bound(self) -> str:
        """The interval in words: ``>= 1``, ``in (0, 1]``, or nothing."""
        low = None if self.low is None else ("(" if self.low_open else "[") + _number(self.low)
        high = None if self.high is None else _number(self.high) + (")" if self.high_open else "]")
        if low and high:
            return f" in {low}, {high}"
        if low:
            return f" {'>' if self.low_open else '>='} {_number(self.low)}"
        if high:
            return f" {'<' if self.high_open else '<='} {_number(self.high)}"
        return ""

    def expectation(self) -> str:
        return ("an integer" if self.integer else "a number") + self.bound() + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class Numbers:
    """A list of numbers, each checked by ``item``, of a fixed ``length`` where given."""

    item: Number
    length: int | tuple[int, ...] | None = None  # one length, or the lengths allowed
    total: float | None = None  # the items must sum to this

    def lengths(self) -> tuple[int, ...]:
        return (self.length,) if isinstance(self.length, int) else tuple(self.length or ())

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) not in self.lengths()):
            return False
        if not all(self.item.accepts(v) for v in value):
            return False
        return self.total is None or math.isclose(sum(value), self.total, abs_tol=1e-6)

    def expectation(self) -> str:
        count = " or ".join(str(n) for n in self.lengths()) + " " if self.length is not None else ""
        kind = "integers" if self.item.integer else "numbers"
        each = f", each{self.item.bound()}" if self.item.bound() else ""
        total = f", summing to {_number(self.total)}" if self.total is not None else ""
        return f"a list of {count}{kind}{each}{total}"


@dataclass(frozen=True)
class OneOf:
    """One of a few words."""

    choices: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return any(value == choice and type(value) is type(choice) for choice in self.choices)

    def expectation(self) -> str:
        return "one of " + ", ".join("null" if c is None else str(c).lower() if isinstance(c, bool) else str(c)
                                     for c in self.choices)


@dataclass(frozen=True)
class Text:
    """A non-empty string (names, paths, class paths); ``None`` allowed where ``nullable``."""

    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        return (value is None and self.nullable) or (isinstance(value, str) and value.strip() != "")

    def expectation(self) -> str:
        return "a non-empty string" + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class FlagOrPath:
    """``resume``: true, false, or a run dir."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool) or value is None or (isinstance(value, str) and value.strip() != "")

    def expectation(self) -> str:
        return "true, false or a run dir"


FLAG = OneOf((True, False))
POSITIVE = Number(low=0, low_open=True)
NON_NEGATIVE = Number(low=0)
COUNT = Number(low=1, integer=True)  # at least one
STEPS = Number(low=0, integer=True)  # zero allowed
FRACTION = Number(low=0, high=1)
DECAY = Number(low=0, high=1, high_open=True)
UNCHECKED = None  # structure, not a setting: targets, Hydra's own nodes

# First matching pattern wins: specific patterns before the general ones below them.
RULES: tuple[tuple[str, Any], ...] = (
    ("hydra.*", UNCHECKED),
    ("*._target_", UNCHECKED),
    ("*._partial_", UNCHECKED),
    ("model", OneOf((None,))),  # a group left empty (model: null, logger: null); chosen, it is a node
    ("logger", OneOf((None,))),
    ("paths.*", Text()),
    ("task_name", Text()),
    ("run_name", Text()),
    ("search_run", Text(nullable=True)),
    ("seed", Number(low=0, high=2**32 - 1, integer=True)),
    ("partition_seed", Number(low=0, high=2**32 - 1, integer=True, nullable=True)),
    ("bench_table", Text(nullable=True)),
    ("resume", FlagOrPath()),
    ("personalize", FLAG),
    ("plots_every", Number(low=0, integer=True, nullable=True)),
    # the federation
    ("federation.split", Numbers(FRACTION, length=(3, 4), total=1.0)),  # train, val, test[, holdout]
    ("federation.client_fraction", Number(low=0, high=1, low_open=True)),
    ("federation.dropout_probability", DECAY),
    ("federation.local_batches", Number(low=1, integer=True, nullable=True)),
    ("federation.global_test_samples", Number(low=1, integer=True, nullable=True)),
    ("federation.deadline_seconds", Number(low=0, low_open=True, nullable=True)),
    ("federation.update_clip_norm", Number(low=0, low_open=True, nullable=True)),
    ("federation.*", COUNT),
    # data
    ("dataset.name", Text()),
    ("dataset.data_dir", Text()),
    ("dataset.download", FLAG),
    ("dataset.test_fraction", Number(low=0, high=1, low_open=True, high_open=True)),
    ("dataset.signal", POSITIVE),
    ("dataset.*seed", Number(low=0, integer=True)),
    ("dataset.num_classes", Number(low=2, integer=True)),
    ("dataset.*", COUNT),
    ("partition.name", Text()),
    ("partition.label", Text()),  # its short form in run names (dir0.5, tau4, iid)
    ("partition.alpha", POSITIVE),
    ("partition.min_client_size", STEPS),
    ("partition.*", COUNT),
    # search spaces and fixed models
    ("search_space.primitives", Text()),  # a list: checked item by item below
    ("search_space.primitives.*", Text()),
    ("search_space.tie_cells", FLAG),  # one searched cell in every layer (the benchmark's space)
    ("search_space.*", COUNT),
    ("model.genotype", Text(nullable=True)),  # a genotype.json, or random
    ("model.genotype_seed", Number(low=0, integer=True)),
    ("model.budget_params", Number(low=1, integer=True, nullable=True)),
    ("model.size", OneOf(("small", "large"))),
    ("model.width_mult", POSITIVE),
    ("model.drop_rate", DECAY),
    ("model.channels", Numbers(COUNT)),
    ("model.block_config", Numbers(COUNT)),
    ("model.hidden", COUNT),  # an int or a list of ints: lists are checked item by item below
    ("model.hidden.*", COUNT),
    ("model.*", COUNT),
    # the methods
    ("algorithm.name", Text()),
    ("algorithm.local_step", OneOf(("sgd", "maml"))),
    ("algorithm.local_search", OneOf(("fednas", "fedmetanas"))),
    ("algorithm.alpha_update", OneOf(("adam", "ascent"))),
    ("algorithm.relaxation", OneOf(("softmax", "gumbel"))),
    ("algorithm.temperature.clock", OneOf(("rounds", "task"))),
    ("algorithm.temperature.shape", OneOf(("linear", "exponential", "cosine"))),
    ("algorithm.temperature.*", POSITIVE),
    ("algorithm.pruning.at", Numbers(Number(low=0, high=1, low_open=True))),
    ("algorithm.pruning.threshold", Number(low=0, high=1, high_open=True)),
    ("algorithm.final_model", OneOf(("supernet", "discretized", "most_likely_child"))),
    ("algorithm.warmup", Number(low=0, high=1, high_open=True)),
    ("algorithm.tempered_sampling", FLAG),
    ("algorithm.maml.w_keeps_support_steps", FLAG),
    ("algorithm.val_lambda", NON_NEGATIVE),
    ("algorithm.lam", NON_NEGATIVE),
    ("algorithm.mu", NON_NEGATIVE),
    ("algorithm.baseline_decay", DECAY),
    ("algorithm.input_combinations", Number(low=1, integer=True, nullable=True)),
    ("algorithm.personal_cells", STEPS),
    ("algorithm.task_size", Number(low=1, integer=True, nullable=True)),
    ("algorithm.maml.task_size", Number(low=1, integer=True, nullable=True)),
    ("algorithm.reward_batches", Number(low=1, integer=True, nullable=True)),
    ("algorithm.grad_clip", Number(low=0, low_open=True, nullable=True)),
    ("algorithm.*betas", Numbers(DECAY, length=2)),
    ("algorithm.*momentum", DECAY),
    ("algorithm.*weight_decay", NON_NEGATIVE),
    ("algorithm.*eps", POSITIVE),
    ("algorithm.finetune_lr", Number(low=0, low_open=True, nullable=True)),
    ("algorithm.personal_lr", Number(low=0, low_open=True, nullable=True)),
    ("algorithm.*lr*", POSITIVE),
    ("algorithm.*steps", STEPS),
    ("algorithm.*batches", STEPS),
    # how it runs
    ("trainer.accelerator", OneOf(("cpu", "gpu", "cuda", "mps", "auto"))),
    ("trainer.precision", OneOf(("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true",
                                 "64-true", "64"))),
    ("cluster.backend.compile", FLAG),
    ("cluster.backend.launch", OneOf(("spawn", "env"))),
    ("cluster.backend.workers", Number(low=1, integer=True, nullable=True)),
    ("cluster.backend.max_workers", Number(low=1, integer=True, nullable=True)),
    ("cluster.backend.threads_per_worker", Number(low=1, integer=True)),
    ("cluster.backend.*seconds", POSITIVE),
    ("logger.*", Text()),
    # scripts/tune.py's protocol (an experiment's `tuning` node); a list that holds words is checked item by item
    ("search_dir", Text()),  # experiment=evaluate_cells_cpu: where the searches it trains the cells of lie
    ("tuning.entry", OneOf(("search", "train"))),  # the entry point of the experiment's runs
    ("tuning.selection_metric", OneOf(("val_acc", "val_loss", "personal_val_acc", "personal_val_loss"))),
    ("tuning.seeds", Numbers(Number(low=0, high=2**32 - 1, integer=True))),
    ("tuning.grid_split", Numbers(FRACTION, length=4, total=1.0)),  # the grid runs' split: its 4th part scores them
    ("tuning.methods.*.overrides", Text()),
    ("tuning.methods.*.overrides.*", Text()),
    ("tuning.methods.*.grid", Text()),
    ("tuning.methods.*.grid.*", Text()),  # a point (a list of overrides) and each override in it
    ("tuning.methods.*.retrain", Text()),  # a search + retrain method's src/train.py overrides
    ("tuning.methods.*.retrain.*", Text()),
)


def rule_for(key: str) -> Any:
    """The rule of a setting's dotted key (list items as ``key.<index>`` fall back to ``key.*``)."""
    for pattern, rule in RULES:
        if fnmatchcase(key, pattern):
            return rule
    return UNCHECKED


def holds_a_list(key: str) -> bool:
    """Whether the setting may be a list checked item by item: its items have a rule of their own
    (``model.hidden.*``), or it is a list of words (a tuning grid point); not where only a group's catch-all
    (``federation.*``) covers both the setting and its would-be items."""
    own, item = matching_pattern(key), matching_pattern(f"{key}.0")
    if item is None:
        return False
    if item == own:
        return isinstance(dict(RULES)[own], Text)
    return not fnmatchcase(key, item)  # a rule for the items alone, not a catch-all that covers the key too


def matching_pattern(key: str) -> str | None:
    return next((pattern for pattern, _ in RULES if fnmatchcase(key, pattern)), None)


def settings(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf the user can type; interpolations are checked where they point."""
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in items:
        child = node._get_node(key)
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if child is None or child._is_interpolation() or child._is_missing():
            continue
        if isinstance(child, DictConfig):
            yield from settings(child, dotted)
        elif isinstance(child, ListConfig) and (isinstance(rule_for(dotted), (Numbers, type(None)))
                                                or not holds_a_list(dotted)):
            yield dotted, OmegaConf.to_container(child)  # a list where one value belongs is refused by its rule
        elif isinstance(child, ListConfig):
            yield from settings(child, dotted)
        else:
            yield dotted, child._value()


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the first setting whose value has the wrong type or range, or a GPU
    asked for on a machine that surely has none.

    Once per config: the entry points check before torch is imported (a bad value fails in a second), and
    ``run_search``/``run_train`` check again for callers that come in without an entry point; the settings of a
    config of the same content that passed are not walked twice."""
    digest = hashlib.sha256(OmegaConf.to_yaml(cfg).encode()).hexdigest()
    if digest not in _PASSED:
        for key, value in settings(cfg):
            rule = rule_for(key)
            if rule is not None and not rule.accepts(value):
                raise ConfigError(f"{key} must be {rule.expectation()}, got {value!r}")
        check_together(cfg)
        _PASSED.add(digest)
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")  # the machine's part: checked every time
    absent = surely_no_gpu() if accelerator in ("gpu", "cuda") else None
    if absent:
        raise ConfigError(f"trainer.accelerator={accelerator} but no GPU is visible ({absent}); "
                          f"use trainer.accelerator=cpu or auto")


_PASSED: set[str] = set()  # digests of the configs check_config passed


def check_together(cfg: DictConfig) -> None:
    """Settings valid alone that contradict each other: one line naming both, before any round runs."""
    fed = cfg.get("federation")
    if fed is not None and all(fed.get(k) is not None for k in ("num_clients", "client_fraction", "min_responders")):
        per_round = max(1, int(round(float(fed.client_fraction) * int(fed.num_clients))))
        if int(fed.min_responders) > per_round:
            raise ConfigError(f"federation.min_responders={fed.min_responders} is more than the {per_round} clients a "
                              f"round samples (federation.num_clients={fed.num_clients} x client_fraction="
                              f"{fed.client_fraction}): no round could ever be aggregated")
    space = cfg.get("search_space")
    if space is not None and isinstance(space.get("C"), int) and space.get("steps") is not None and space.C % 2:
        raise ConfigError(f"search_space.C={space.C} must be even: each cell splits its channels in two")
    if space is not None and space.get("steps") is not None and space.get("multiplier") is not None:
        if int(space.multiplier) > int(space.steps):
            raise ConfigError(f"search_space.multiplier={space.multiplier} concatenates more nodes than the cell's "
                              f"search_space.steps={space.steps}")
    combinations = OmegaConf.select(cfg, "algorithm.input_combinations")
    if combinations is not None and int(combinations) > 2:
        raise ConfigError(f"algorithm.input_combinations={combinations}: a cell's first node has only 2 inputs to "
                          "choose from; use 1 or 2 (the FedMetaNAS paper's Eq. 8: 2)")
    if cfg.get("bench_table") and not OmegaConf.select(cfg, "search_space.tie_cells"):
        raise ConfigError(f"bench_table={cfg.bench_table} scores a search of the benchmark's space: add "
                          "search_space=bench")


GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")  # NVIDIA's, ROCm's, WSL's GPU devices


def surely_no_gpu() -> str | None:
    """Why no GPU can be visible to torch, where that is known without importing it (torch takes ~10 s
    to ask); None where unsure, and torch's own check (``backends.visible_gpus``) decides later."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r}"
    if sys.platform.startswith("linux") and os.path.isdir("/dev") and not any(
            glob.glob(pattern) for pattern in GPU_DEVICE_FILES):
        return "no GPU device in /dev: " + ", ".join(GPU_DEVICE_FILES)
    return None
