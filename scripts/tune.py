"""Tune every method of an experiment the same way, on validation data, then report the picks over seeds.

    python scripts/tune.py experiment=digits_compare [override ...]   # make tune EXPERIMENT=digits_compare
    python scripts/tune.py experiment=digits_compare --table          # make compare-tuned: reprint the table
    python scripts/tune.py experiment=bench_methods --table --out logs/tune_bench_methods_iid   # committed: benchmarks/<name>.json

The experiment's ``tuning`` node names the methods (the overrides that define each), one grid per method
(every method the same number of points), the seeds and the selection metric. For each method the driver
runs every grid point at the first seed (``src/search.py``, one process per run, logger=none), scores each
run's final global model on the union of the clients' holdout splits (``tuning.grid_split``'s 4th fraction,
which no method trains on; without it, on their val splits), picks the best, and runs the pick at every seed
with the experiment's own split. Of the test set the driver records only the picks' seed runs. Everything lands in
``logs/tune_<experiment>/``: the run dirs under ``runs/``, each run's log under ``run_logs/``, and
``tuning.json`` (the grid, every point's val score, the picks, per-seed test accuracy and times), rewritten
after each run. A run dir that holds FINISHED is not run again, so an interrupted tuning resumes; one that
holds a run of other overrides (the grid was edited) is an error, never silently reused.
Extra overrides (e.g. ``federation.rounds=2`` for a smoke test) go to every run.
A method with a ``retrain`` list is a search + retrain method (FedNAS): each of its runs is a search
(``<run>-search``, with the grid point) and then ``src/train.py`` on its genotype (``<run>``, with the
experiment's and the ``retrain`` overrides, on the same split); the trained network is scored and reported,
and its time is both stages'.
An experiment whose ``tuning.entry`` is ``train`` tunes train-stage runs (``src/train.py``: fixed networks and
genotypes, e.g. searched cells against random ones at one size, experiment=evaluate_cells_cpu).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from federated_nas.cli import one_line_errors
from federated_nas.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="+", help="experiment=<name> (with a tuning node), then any overrides")
    parser.add_argument("--table", action="store_true", help="only reprint the table of an existing tuning.json")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: logs/tune_<experiment>)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="methods tuned at once, each in its own run processes (give each OMP_NUM_THREADS=1 "
                             "on a small machine); the runs and picks are the same as with 1")
    return parser.parse_args(argv)


def experiment_of(overrides: list[str]) -> str:
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    if len(names) != 1 or not names[0]:
        raise ConfigError("give the experiment to tune once, as experiment=<name> (e.g. experiment=digits_compare)")
    return names[0]


def compose_checked(overrides: list[str], where: str, config_name: str = "search") -> Any:
    """``config_name``.yaml composed with ``overrides`` and checked; Hydra's errors as one line naming ``where``."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from federated_nas.config_checks import check_config

    try:
        cfg = compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:  # bad override syntax, an unknown key or option
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{where}: {first}") from None
    check_config(cfg)
    return cfg


def grid_split_override(tuning: Any) -> list[str]:
    """The grid runs' ``federation.split`` override: ``tuning.grid_split``, whose 4th fraction is held out
    from every client's share and scores the grid (none: the grid is scored on the val splits). Its four
    fractions were checked with the config (``config_checks``)."""
    split = tuning.get("grid_split")
    return [] if split is None else [f"federation.split=[{','.join(str(f) for f in split)}]"]


def entry_of(overrides: list[str]) -> str:
    """The entry point an experiment's runs use: its ``tuning.entry``, search (the default) or train."""
    from hydra import compose

    tuning = compose("search", overrides=overrides).get("tuning") or {}
    return str(tuning.get("entry", "search"))


def compose_all(overrides: list[str], task: str) -> tuple[Any, dict[str, list[list[str]]], dict[str, list[str] | None]]:
    """The base config; per method, each grid point's full override list (the seed runs'; the grid runs
    add ``grid_split_override``); and per method its train stage's overrides (None: no retraining). Every
    one composed and checked, with and without the grid's split, with the entry point's config."""
    from hydra import initialize_config_dir

    from federated_nas.tracking.tuning import tuning_plan

    runs: dict[str, list[list[str]]] = {}
    retrains: dict[str, list[str] | None] = {}
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        compose_checked(overrides, " ".join(overrides))  # bad overrides: one line, before reading the entry
        entry = entry_of(overrides)
        base = compose_checked(overrides, " ".join(overrides), entry)
        if base.get("tuning") is None:
            raise ConfigError(f"{experiment_of(overrides)}: the experiment has no tuning node to run")
        split = grid_split_override(base.tuning)
        for plan in tuning_plan(base.tuning):
            runs[plan.name] = []
            for index, point in enumerate(plan.grid):
                full = [*overrides, *plan.overrides, *point, f"task_name={task}", "logger=none"]
                compose_checked(full, f"tuning.methods.{plan.name}.grid.{index}", entry)
                compose_checked([*full, *split], f"tuning.methods.{plan.name}.grid.{index}", entry)
                runs[plan.name].append(full)
            retrains[plan.name] = None
            if plan.retrain is not None:
                if entry != "search":
                    raise ConfigError(f"tuning.methods.{plan.name}.retrain: only a search experiment retrains")
                retrains[plan.name] = [*overrides, *plan.retrain, f"task_name={task}", "logger=none"]
                for extra in ([], split):
                    compose_checked([*retrains[plan.name], *extra], f"tuning.methods.{plan.name}.retrain", "train")
    return base, runs, retrains


def run_method(search: list[str], retrain: list[str] | None, run_dir: Path, log_path: Path,
               entry: str = "search") -> float:
    """A method's run at ``run_dir``: the search (or, for ``entry`` train, the train run), or for a search +
    retrain method the search at ``<run_dir>-search`` and then the training of its genotype at ``run_dir``.
    Wall seconds of both."""
    if retrain is None:
        return run_once(search, run_dir, log_path, f"{entry}.py")
    search_dir, _ = stage_dirs(run_dir, retrain)
    wall = run_once(search, search_dir, log_path.with_name(log_path.stem + "-search.log"))
    return round(wall + run_once([*retrain, f"search_run={search_dir}"], run_dir, log_path, "train.py"), 2)


def stage_dirs(run_dir: Path, retrain: list[str] | None) -> list[Path]:
    """The run dirs a method's run consists of (its search's first, where it has two stages)."""
    return [run_dir] if retrain is None else [run_dir.with_name(run_dir.name + "-search"), run_dir]


def elapsed_seconds(run_dir: Path, retrain: list[str] | None) -> float:
    """Loop seconds of a method's run: both stages' for a search + retrain method."""
    from federated_nas.federation.validation import final_metrics

    return sum(final_metrics(stage)["elapsed_seconds"] for stage in stage_dirs(run_dir, retrain))


def run_once(overrides: list[str], run_dir: Path, log_path: Path, script: str = "search.py") -> float:
    """One run of ``src/<script>`` in its own process; its wall seconds (kept in the run dir, so a resumed
    tuning has them)."""
    wall_file, saved = run_dir / "tuning_wall_seconds", run_dir / ".hydra" / "overrides.yaml"
    # as written: an override may hold an interpolation (search_run=${search_dir}/...), never resolved here
    if saved.is_file() and [str(o) for o in OmegaConf.to_container(OmegaConf.load(saved))] != overrides:
        raise DataError(f"{run_dir} holds a run of other overrides (see {saved}); delete it or tune with another --out")
    if (run_dir / "FINISHED").exists() and wall_file.exists():
        return float(wall_file.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again from scratch
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, str(ROOT / "src" / script), *overrides,
                               f"hydra.run.dir={run_dir}"], stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = round(time.perf_counter() - started, 2)  # as kept in the file, so a resumed tuning writes the same
    if done.returncode != 0:
        raise DataError(f"run {run_dir} failed (exit {done.returncode}); its log: {log_path}")
    wall_file.write_text(str(wall))
    return wall


def seed_record(run_dir: Path, wall: float, retrain: list[str] | None = None) -> dict[str, Any]:
    """What the table reports of one seed run of a pick: test accuracies, val score, times (both stages'
    for a search + retrain method, whose accuracies are its trained network's)."""
    from federated_nas.federation.personalization import CLIENT_ACCURACY
    from federated_nas.federation.validation import final_metrics, validation_score
    from federated_nas.tracking.tuning import PERSONAL_ACC

    last = final_metrics(run_dir)
    keep = ("global_test_acc", "global_test_acc_discrete", "client_test_acc_mean", "client_test_acc_std",
            "params", "supernet_params", "derived_params")
    record = {"run_dir": str(run_dir), **{k: last[k] for k in keep if k in last}, **validation_score(run_dir),
              "wall_seconds": wall, "elapsed_seconds": elapsed_seconds(run_dir, retrain)}
    personalized = run_dir / "personalized" / CLIENT_ACCURACY  # written by runs with personalize=true
    if personalized.is_file():
        after = json.loads(personalized.read_text())["after"]
        record[PERSONAL_ACC] = sum(after) / len(after)
    return record


def tune(overrides: list[str], out: Path, jobs: int = 1) -> dict[str, Any]:
    from federated_nas.federation.validation import validation_score
    from federated_nas.tracking.tuning import BUDGET_KEYS, pick

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    task = out.name
    base, runs, retrains = compose_all(overrides, task)
    entry = str(base.tuning.get("entry", "search"))
    seeds, metric = [int(s) for s in base.tuning.seeds], str(base.tuning.selection_metric)
    grid_split = grid_split_override(base.tuning)
    result: dict[str, Any] = {
        "experiment": experiment_of(overrides), "overrides": overrides, "selection_metric": metric, "seeds": seeds,
        "grid_points": len(next(iter(runs.values()))), "grid_split": grid_split,
        "budget": {key: OmegaConf.select(base, key) for key in BUDGET_KEYS}, "methods": {}}
    methods = OmegaConf.to_container(base.tuning.methods, resolve=True)

    saving = threading.RLock()  # held while a method's record changes and while the file is written
    for name in runs:  # the table's order is the experiment's, whichever method finishes first
        result["methods"][name] = {"overrides": methods[name]["overrides"], "grid": [], "pick": None, "seeds": {}}
        if retrains[name] is not None:
            result["methods"][name]["retrain"] = methods[name]["retrain"]

    def save() -> None:
        with saving:
            out.mkdir(parents=True, exist_ok=True)
            (out / "tuning.json").write_text(json.dumps(result, indent=2))

    def tune_method(name: str, points: list[list[str]]) -> None:
        method = result["methods"][name]
        for index, full in enumerate(points):
            run_dir = out / "runs" / name / f"p{index}-s{seeds[0]}"
            retrain = None if retrains[name] is None else [*retrains[name], *grid_split, f"seed={seeds[0]}"]
            wall = run_method([*full, *grid_split, f"seed={seeds[0]}"], retrain, run_dir,
                              out / "run_logs" / f"{name}-p{index}-s{seeds[0]}.log", entry)
            # the grid's test accuracy is never recorded: only its val score decides
            point = {"overrides": methods[name]["grid"][index], "run_dir": str(run_dir),
                     "val": validation_score(run_dir), "wall_seconds": wall,
                     "elapsed_seconds": elapsed_seconds(run_dir, retrain)}
            print(f"{name} grid {index}: {' '.join(point['overrides'])}: {metric} {point['val'][metric]:.4f} "
                  f"({wall:.0f} s)", flush=True)
            with saving:
                method["grid"].append(point)
                save()
        with saving:
            method["pick"] = chosen = pick([point["val"] for point in method["grid"]], metric)
        for seed in seeds:
            # without a grid split the pick's first-seed run is its grid run, reused; with one it runs again
            stem = f"p{chosen}-s{seed}" + ("-full" if grid_split else "")
            run_dir = out / "runs" / name / stem
            retrain = None if retrains[name] is None else [*retrains[name], f"seed={seed}"]
            wall = run_method([*points[chosen], f"seed={seed}"], retrain, run_dir, out / "run_logs" / f"{name}-{stem}.log",
                              entry)
            record = seed_record(run_dir, wall, retrain)
            with saving:
                method["seeds"][str(seed)] = record
                save()

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on run processes
        for done in [pool.submit(tune_method, name, points) for name, points in runs.items()]:
            done.result()  # a failed run's one-line error, after the other methods finish
    return result


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    experiment = experiment_of(args.overrides)
    out = args.out or ROOT / "logs" / f"tune_{experiment}"
    from federated_nas.tracking.tuning import format_table

    if args.table:
        # a fresh clone: the tuning behind the docs' table, committed as benchmarks/<out folder's name>.json
        source, committed = out / "tuning.json", ROOT / "benchmarks" / f"{Path(out).name}.json"
        if not source.is_file() and committed.is_file():
            source = committed
            print(f"(no tuning of this experiment under {out}: the committed one, {committed.relative_to(ROOT)})")
        if not source.is_file():
            raise DataError(f"{source} does not exist: run make tune EXPERIMENT={experiment} first")
        result = json.loads(source.read_text())
    else:
        result = tune(args.overrides, out, args.jobs)
        print(f"wrote {out / 'tuning.json'}")
    print(format_table(result))


if __name__ == "__main__":
    main()
