"""Every setting has a type and range check that names it, run before torch loads."""

from __future__ import annotations

import copy
import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from federated_nas import config_checks
from federated_nas.config_checks import (RULES, UNCHECKED, FlagOrPath, OneOf, Text, check_config, rule_for,
                                         settings)
from federated_nas.errors import ConfigError
from federated_nas.runs import run_search
from helpers import ROOT

CONFIGS = ROOT / "configs"
GROUPS = ("algorithm", "dataset", "partition", "search_space", "model", "trainer", "logger", "cluster", "preset",
          "experiment", "debug", "paths")
NEEDS_A_MODEL = {"fedavg", "fedprox", "ditto", "fedrep", "fedbabu", "perfedavg"}


@pytest.fixture(scope="module")
def every_shipped_config() -> list[tuple[str, DictConfig]]:
    """Each file of each config group composed into search.yaml, and train.yaml: (its overrides, the config).
    Composed once (seconds) for the tests below, which only read them."""
    composed = []
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        composed.append(("train", compose("train")))
        for group in GROUPS:
            for path in sorted((CONFIGS / group).glob("*.yaml")):
                overrides = [f"{group}={path.stem}"]
                if group == "algorithm" and path.stem in NEEDS_A_MODEL:
                    overrides.append("model=cnn")
                if group == "model":
                    overrides.append("algorithm=fedavg")
                composed.append((" ".join(overrides), compose("search", overrides=overrides)))
    return composed


def test_every_shipped_setting_has_a_check_and_passes_it(every_shipped_config):
    """A new setting fails here until RULES says what values it takes."""
    seen = set()
    for name, cfg in every_shipped_config:
        check_config(cfg)  # the shipped defaults are valid
        for key, _ in settings(cfg):
            seen.add(key)
            structural = key.endswith(("._target_", "._partial_"))
            assert structural or rule_for(key) is not UNCHECKED, f"{key} (composed by {name}) has no rule"
    assert len(seen) > 100
    patterns = [pattern for pattern, rule in RULES if rule is not UNCHECKED]
    assert len(patterns) == len(set(patterns))


@pytest.mark.parametrize("override, message", [
    # found failing: each ran for minutes, printed a traceback, or left a half-written run
    ("algorithm.lr=-0.1", "algorithm.lr must be a number > 0, got -0.1"),
    ("partition.alpha=abc", "partition.alpha must be a number > 0, got 'abc'"),
    ("seed=-5", "seed must be an integer in [0, 4294967295], got -5"),
    # one of each kind of rule
    ("federation.rounds=2.5", "federation.rounds must be an integer >= 1, got 2.5"),
    ("federation.client_fraction=0", "federation.client_fraction must be a number in (0, 1], got 0"),
    ("federation.local_batches=0", "federation.local_batches must be an integer >= 1 or null, got 0"),
    ("federation.split=[0.5,0.6,0.1]", "federation.split must be a list of 3 or 4 numbers, each in [0, 1], summing to 1"),
    ("federation.deadline_seconds=-1", "federation.deadline_seconds must be a number > 0 or null"),
    ("plots_every=often", "plots_every must be an integer >= 0 or null, got 'often'"),
    ("personalize=yes", "personalize must be one of true, false, got 'yes'"),
    ("trainer.accelerator=tpu", "trainer.accelerator must be one of cpu, gpu, cuda, mps, auto, got 'tpu'"),
    ("algorithm.w_optimizer.momentum=1.0", "algorithm.w_optimizer.momentum must be a number in [0, 1), got 1.0"),
    ("algorithm.alpha_optimizer.betas=[0.5]", "algorithm.alpha_optimizer.betas must be a list of 2 numbers"),
    ("search_space.C=0", "search_space.C must be an integer >= 1, got 0"),
    ("dataset.num_classes=1", "dataset.num_classes must be an integer >= 2, got 1"),
])
def test_a_bad_value_is_one_line_naming_the_setting(tiny_cfg, override, message):
    cfg = tiny_cfg("search", ["logger=none", override])
    with pytest.raises(ConfigError) as raised:
        check_config(cfg)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        run_search(cfg)  # the library entry checks too
    assert not Path(cfg.paths.output_dir).exists()


@pytest.mark.parametrize("override, message", [
    ("algorithm=fedmetanas algorithm.temperature.shape=step", "algorithm.temperature.shape must be one of linear"),
    ("algorithm=fedmetanas algorithm.pruning.at=[0.5,1.5]", "algorithm.pruning.at must be a list of numbers, each in (0, 1]"),
    ("algorithm=fedrlnas algorithm.local_step=adam", "algorithm.local_step must be one of sgd, maml, got 'adam'"),
    ("algorithm=fedavg model=mlp model.hidden=[16,0]", "model.hidden.1 must be an integer >= 1, got 0"),
    ("algorithm=ditto model=cnn algorithm.personal_lr=0", "algorithm.personal_lr must be a number > 0 or null"),
    ("cluster=multiprocess cluster.backend.workers=0", "cluster.backend.workers must be an integer >= 1 or null"),
    # settings valid alone, contradicting each other
    ("federation.client_fraction=0.5 federation.min_responders=3", "federation.min_responders=3 is more than the 2 clients"),
    ("search_space.multiplier=5", "search_space.multiplier=5 concatenates more nodes than the cell's search_space.steps=4"),
    ("algorithm=fedmetanas algorithm.input_combinations=3", "algorithm.input_combinations=3: a cell's first node"),
    ("bench_table=t.json.gz", "bench_table=t.json.gz scores a search of the benchmark's space"),
    ("search_space.C=15", "search_space.C=15 must be even"),
    ("federation.batch_size=[1]", "federation.batch_size must be an integer >= 1, got [1]"),  # a list for one value
])
def test_method_and_backend_settings_are_checked(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.").replace("[", r"\[").replace("(", r"\(")):
        check_config(tiny_cfg("search", override.split()))


def test_a_log_dir_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, str(ROOT / "src" / "search.py"), f"paths.log_dir={blocker}/logs",
                             "logger=none"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: paths.log_dir={blocker}/logs cannot be created (Not a directory); set paths.log_dir to a writable folder"]


def test_a_config_error_on_the_command_line_comes_before_torch_and_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "runs" / "bad" / "now"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "src" / "search.py"), "partition.alpha=abc", "logger=none",
         f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["error: partition.alpha must be a number > 0, got 'abc'"]
    assert "omegaconf" in imported and "torch" not in imported and "lightning" not in imported
    assert not run_dir.exists() and not run_dir.parent.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("known_without_torch", [True, False])
def test_a_gpu_asked_for_where_there_is_none_fails_before_the_data_loads(tiny_cfg, monkeypatch, known_without_torch):
    """Where /dev or CUDA_VISIBLE_DEVICES tells, the config check says so; elsewhere torch's check does."""
    if not known_without_torch:
        monkeypatch.setattr(config_checks, "surely_no_gpu", lambda: None)
    cfg = tiny_cfg("search", ["logger=none", "trainer.accelerator=gpu"])
    with pytest.raises(ConfigError, match=r"^trainer\.accelerator=gpu but no GPU is visible"):
        run_search(cfg)
    assert not Path(cfg.paths.output_dir).exists()


@pytest.mark.parametrize("visible, devices, why", [
    ("", [], "CUDA_VISIBLE_DEVICES=''"),
    ("-1", ["/dev/nvidia0"], "CUDA_VISIBLE_DEVICES='-1'"),
    (None, [], "no GPU device in /dev"),
    (None, ["/dev/nvidia0"], None),  # a GPU may be there: torch decides
    ("0", ["/dev/kfd"], None),
])
def test_no_gpu_is_known_without_torch_only_where_it_is_certain(monkeypatch, visible, devices, why):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(config_checks.sys, "platform", "linux")
    monkeypatch.setattr(config_checks.glob, "glob",
                        lambda pattern: [d for d in devices if fnmatch.fnmatch(d, pattern)])
    found = config_checks.surely_no_gpu()
    assert found == why if why is None or why.startswith("CUDA") else found.startswith(why)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_a_gpu_config_error_answers_without_importing_torch(tmp_path):
    run_dir = tmp_path / "never"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "src" / "search.py"), "trainer.accelerator=gpu",
         "logger=none", f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["error: trainer.accelerator=gpu but no GPU is visible (CUDA_VISIBLE_DEVICES=''); "
                      "use trainer.accelerator=cpu or auto"]
    assert "torch" not in imported and not run_dir.exists()


def a_bad_value(rule):
    """A value the rule rejects: the wrong type for every kind of rule."""
    if isinstance(rule, Text):
        return 5
    if isinstance(rule, FlagOrPath):
        return 5
    if isinstance(rule, OneOf):
        return "no-such-choice"
    return "abc"  # Number, Numbers


def test_every_setting_rejects_a_bad_value_in_one_line_naming_it(every_shipped_config):
    """Each setting's check, run on a value of the wrong type, names that setting (the group slots aside)."""
    configs = {}
    for _, cfg in every_shipped_config:
        for key, _ in settings(cfg):
            rule = rule_for(key)
            if rule is not UNCHECKED and rule != OneOf((None,)) and key not in configs:
                configs[key] = cfg
    assert len(configs) > 100
    for key, cfg in configs.items():
        bad = copy.deepcopy(cfg)
        OmegaConf.update(bad, key, a_bad_value(rule_for(key)), force_add=True)
        with pytest.raises(ConfigError) as raised:
            check_config(bad)
        message = str(raised.value)
        assert message.startswith(f"{key} must be ") and "\n" not in message, message


def test_a_setting_left_over_from_another_option_is_one_line(tmp_path):
    """An experiment's Dirichlet alpha, kept after switching the partition to IID: the line names the key and
    the Hydra override that drops it, which then works."""
    from federated_nas.builders import build_data

    def data(*extra: str):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("search", overrides=["experiment=bench_methods", "partition=iid", *extra, "bench_table=null",
                                               "dataset=synthetic", "federation.num_clients=3",
                                               f"paths.root_dir={tmp_path}"])
        return build_data(cfg)

    with pytest.raises(ConfigError, match=r"^partition.alpha is not a setting of partition=iid \(federated_nas.data."
                                          r"partitions.IIDPartitioner\); .* drop it with '~partition.alpha'$"):
        data()
    assert len(data("~partition.alpha").clients) == 3


def test_word_choices_match_the_code_that_reads_them():
    """config_checks sits below the methods (it runs before torch loads), so its word lists repeat the code's
    registries; this keeps each pair equal, so a new choice in the code cannot be refused by the check."""
    from federated_nas.algorithms.core.reinforce import ALPHA_UPDATES
    from federated_nas.algorithms.core.schedules import TEMPERATURE_CLOCKS
    from federated_nas.algorithms.core.supernet_methods import FINAL_MODELS
    from federated_nas.algorithms.nas.fedpnas import LOCAL_SEARCHES
    from federated_nas.search_space.relaxations import RELAXATIONS
    from federated_nas.tracking.tuning import SELECTION_METRICS

    registries = {"algorithm.local_search": LOCAL_SEARCHES, "algorithm.alpha_update": ALPHA_UPDATES,
                  "algorithm.relaxation": RELAXATIONS, "algorithm.temperature.clock": TEMPERATURE_CLOCKS,
                  "algorithm.final_model": FINAL_MODELS, "tuning.selection_metric": SELECTION_METRICS}
    for key, registry in registries.items():
        assert set(rule_for(key).choices) == set(registry), key
