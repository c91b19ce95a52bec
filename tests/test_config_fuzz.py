"""Property: for any draw of bad or odd settings, either the run's first round starts, or the run stops with
one line naming a setting and leaves no run dir behind. Never a traceback.

A seeded generator draws 1-3 settings from the config rule table (``config_checks.RULES``) and gives each a
plausible wrong value (wrong type, sign, range, NaN, inf, huge, empty, an unknown word) or a random valid
one, so combinations of valid values meet too. ``make test`` runs a fixed number of examples;
``make fuzz`` (``FUZZ_EXAMPLES``, ``FUZZ_SEED``) runs as many as asked and prints what it found.
"""

from __future__ import annotations

import copy
import math
import os
import random
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from federated_nas.config_checks import UNCHECKED, FlagOrPath, Number, Numbers, OneOf, Text, rule_for, settings
from federated_nas.errors import ConfigError, DataError
from federated_nas.federation import server
from federated_nas.runs import run_search
from helpers import compose_config

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "24"))
SEED = int(os.environ.get("FUZZ_SEED", "0"))
BASES = (["algorithm=fednas"], ["algorithm=fedmetanas"], ["algorithm=feddsnas"], ["algorithm=fedrlnas"],
         ["algorithm=fedavg", "model=cnn"], ["algorithm=ditto", "model=cnn"], ["search_space=bench"])
SKIPPED = ("hydra.", "paths.", "logger", "task_name", "run_name", "resume", "search_run", "search_dir", "tuning.",
           "bench_table", "dataset.", "trainer.accelerator", "trainer.devices", "cluster.")


class FirstRoundStarted(Exception):
    """The property's good outcome: every check passed and the loop began its first round."""


def odd_value(rule: Any, rng: random.Random) -> Any:
    """A value the rule may reject, or a random valid one (a third of the time)."""
    if isinstance(rule, Number):
        low = rule.low if rule.low is not None else -10.0
        high = rule.high if rule.high is not None else low + 100
        valid = rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high))) if rule.integer else rng.uniform(low, high)
        return rng.choice([valid, valid, -1, 0, 0.5, low - 1, high + 1, 10**12, 1e-12, float("nan"), float("inf"),
                           "abc", True, None, [1]])
    if isinstance(rule, Numbers):
        length = rule.lengths()[0] if rule.length is not None else 2
        valid = [round(1.0 / length, 6)] * length
        return rng.choice([valid, valid, [], [1], [-1.0] * length, [float("nan")] * length, [0.5] * (length + 1),
                           "abc", 3])
    if isinstance(rule, OneOf):
        return rng.choice([*rule.choices, *rule.choices, "no-such-choice", 3, None])
    if isinstance(rule, Text):
        return rng.choice(["a-name", "", " ", 5, None])
    if isinstance(rule, FlagOrPath):
        return rng.choice([True, False, "", "/no/such/run", 5])
    return None


def draw(rng: random.Random, tmp_path: Path, index: int):
    """A tiny config with 1-3 settings changed; (config, the changed keys)."""
    cfg = compose_config("search", tmp_path, [*rng.choice(BASES), "logger=none", "personalize=false"], run=f"r{index}")
    keys = [key for key, _ in settings(cfg)
            if rule_for(key) not in (UNCHECKED, OneOf((None,))) and not key.startswith(SKIPPED)]
    changed = rng.sample(keys, rng.randint(1, 3))
    for key in changed:
        OmegaConf.update(cfg, key, odd_value(rule_for(key), rng), force_add=True)
    return cfg, changed


def outcome(cfg, changed: list[str]) -> tuple[str, str | None]:
    """(started | refused | finding, what went wrong where the property fails)."""
    from federated_nas.config_checks import check_config

    run_dir = Path(cfg.paths.output_dir)
    try:
        check_config(cfg)
        run_search(copy.deepcopy(cfg))
    except FirstRoundStarted:
        return "started", None
    except (ConfigError, DataError) as err:
        message = str(err)
        if "\n" in message.strip():
            return "finding", f"{changed}: a message of several lines: {message[:300]!r}"
        if run_dir.exists() and any(run_dir.iterdir()):
            return "finding", f"{changed}: refused ({message[:120]}) but left {run_dir} behind"
        return "refused", None
    except Exception as err:  # noqa: BLE001 -- any other exception is what the fuzz looks for
        values = [OmegaConf.select(cfg, k) for k in changed]
        return "finding", f"{changed} = {values}: {type(err).__name__}: {str(err)[:200]}"
    return "finding", f"{changed}: the run finished without starting a round"


def fuzz(tmp_path: Path, examples: int, seed: int, monkeypatch) -> tuple[dict[str, int], list[str]]:
    def first_round(self, round_idx):
        raise FirstRoundStarted

    monkeypatch.setattr(server.FederatedRun, "_run_round", first_round)
    rng = random.Random(seed)
    counts, findings = {"started": 0, "refused": 0, "finding": 0}, []
    for index in range(examples):
        cfg, changed = draw(rng, tmp_path, index)
        kind, finding = outcome(cfg, changed)
        counts[kind] += 1
        if finding:
            findings.append(finding)
    return counts, findings


def test_odd_settings_start_the_first_round_or_stop_in_one_line(tmp_path, monkeypatch):
    counts, findings = fuzz(tmp_path, EXAMPLES, SEED, monkeypatch)
    print(f"fuzz: {EXAMPLES} examples from seed {SEED}: {counts['started']} started their first round, "
          f"{counts['refused']} refused in one line, {counts['finding']} findings")
    assert not findings, "\n".join(findings)
