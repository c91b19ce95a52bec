"""Did the search find anything? Searched cells trained at size against random cells and the CNN, one table.

    python scripts/evaluate_cells.py [--jobs 2]   # every stage; resumes where it stopped
    python scripts/evaluate_cells.py --table      # reprint (a fresh clone: the committed benchmarks/ copy)
    python scripts/evaluate_cells.py --out /tmp/smoke federation.rounds=1 ...   # overrides go to every run

Stages, each skipping the runs already finished (a run dir holding FINISHED), so an interrupted build resumes:
1. searches: nas_methods_cpu's tuned picks (benchmarks/tune_nas_methods_cpu.json) of FedNAS, FedMetaNAS,
   FedDSNAS and FedRLNAS, searched again at seeds 0-2 (their run dirs are not kept in the repository);
2. the tuning protocol on the train stage (``scripts/tune.py experiment=evaluate_cells_cpu``): every row (the
   four searched cells, a random cell, the CNN) at one parameter budget, 3 learning rates at seed 0 scored on
   held-out data, the pick at seeds 0-2;
3. more random cells (``--extra-random``) at the random row's pick, random genotype g trained at seed g mod 3;
4. FedMetaNAS without retraining at equal loop time: searched for as many rounds as its search plus the
   retraining of its cell took, in proportion (the rounds are fixed once measured, in ``equal_time_rounds``);
5. a remedy, where cells do not beat random ones (``--stages longer_search``, not run by default): FedNAS
   searched ``LONGER``x as many rounds (alpha barely moves in 12), its cell trained at FedNAS' row pick;
6. the table, written to ``logs/evaluate_cells_cpu/evaluation.json`` and copied to benchmarks/ with ``--commit``.
The build spans sessions: ``--commit`` also packs every finished run (what resuming and scoring read: config,
overrides, genotype, last checkpoint) into ``benchmarks/evaluate_cells_cpu/runs.tar.gz``, and a build whose
``--out`` lacks them unpacks it first, so a fresh clone goes on where the last session stopped.
Every run is its own process (``OMP_NUM_THREADS=1`` each is right with ``--jobs 2`` on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tune  # noqa: E402 - the protocol's runner, next to this script

from federated_nas.cli import one_line_errors  # noqa: E402
from federated_nas.errors import DataError  # noqa: E402

ROOT = tune.ROOT
EXPERIMENT = "evaluate_cells_cpu"
SEARCH_TUNING = ROOT / "benchmarks" / "tune_nas_methods_cpu.json"
COMMITTED = ROOT / "benchmarks" / f"{EXPERIMENT}.json"
PACKED = ROOT / "benchmarks" / EXPERIMENT / "runs.tar.gz"
# what a finished run keeps in the pack: enough to skip it when resuming, score it and read its genotype
PACKED_FILES = ("FINISHED", "tuning_wall_seconds", "config.yaml", ".hydra/overrides.yaml", "genotype.json",
                "checkpoints/last.pt")
SEEDS = (0, 1, 2)
LONGER = 3  # the remedy's search length, in multiples of the searches' own rounds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="overrides for every run (a smoke test: federation.rounds=1)")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / EXPERIMENT)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each its own process)")
    parser.add_argument("--extra-random", type=int, default=5, help="random cells beyond the random row's 3")
    parser.add_argument("--stages", default="searches,tuning,random,equal_time",
                        help="comma-separated stages to run before the table")
    parser.add_argument("--table", action="store_true", help="only print the table of an existing evaluation.json")
    parser.add_argument("--commit", action="store_true", help="copy evaluation.json to benchmarks/")
    return parser.parse_args(argv)


def search_runs(out: Path, extra: list[str] = ()) -> list[tuple[str, int, list[str], Path]]:
    """(method, seed, overrides, run dir) of every search: the nas_methods_cpu pick of each method."""
    tuning = json.loads(SEARCH_TUNING.read_text())
    runs = []
    for seed in SEEDS:
        for name, method in tuning["methods"].items():
            point = method["grid"][method["pick"]]["overrides"]
            overrides = [*tuning["overrides"], *method["overrides"], *point, f"task_name={EXPERIMENT}", "logger=none",
                         *extra, f"seed={seed}"]
            runs.append((name, seed, overrides, out / "searches" / name / f"s{seed}"))
    return runs


def run_all(jobs: int, runs: list[tuple[list[str], Path, Path, str]]) -> None:
    """Each (overrides, run dir, log, script) in its own process, ``jobs`` at once; finished ones are skipped."""
    def one(run: tuple[list[str], Path, Path, str]) -> None:
        overrides, run_dir, log, script = run
        wall = tune.run_once(overrides, run_dir, log, script)
        print(f"{run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir}: {wall:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for done in [pool.submit(one, run) for run in runs]:
            done.result()


def random_pick(tuning: dict[str, Any]) -> list[str]:
    method = tuning["methods"]["random"]
    if method.get("pick") is None:
        raise DataError("the random row has no pick yet: run the tuning stage first")
    return method["grid"][method["pick"]]["overrides"]


def extra_random_runs(out: Path, tuning: dict[str, Any], count: int,
                      extra: list[str] = ()) -> list[tuple[list[str], Path, Path, str]]:
    """Random genotypes 3.. at the random row's pick, genotype g at seed g mod 3 (the row has 0-2 at 0-2)."""
    runs = []
    for genotype in range(len(SEEDS), len(SEEDS) + count):
        seed = SEEDS[genotype % len(SEEDS)]
        overrides = [f"experiment={EXPERIMENT}", "model.genotype=random", f"model.genotype_seed={genotype}",
                     *random_pick(tuning), f"task_name={EXPERIMENT}", "logger=none", *extra, f"seed={seed}"]
        name = f"g{genotype}-s{seed}"
        runs.append((overrides, out / "random_cells" / name, out / "run_logs" / f"random-{name}.log", "train.py"))
    return runs


def equal_time_rounds(out: Path, tuning: dict[str, Any]) -> int:
    """FedMetaNAS' rounds at the loop time of its search plus the retraining of its cell, measured once (mean
    over seeds) and kept in ``equal_time_rounds``, so a resumed build runs the same overrides."""
    kept = out / "equal_time_rounds"
    if kept.is_file():
        return int(kept.read_text())
    from federated_nas.federation.validation import final_metrics

    trained = tuning["methods"]["fedmetanas"]["seeds"]
    searches = [out / "searches" / "fedmetanas" / f"s{seed}" for seed in SEEDS]
    search_seconds = sum(final_metrics(run)["elapsed_seconds"] for run in searches)
    train_seconds = sum(trained[str(seed)]["elapsed_seconds"] for seed in SEEDS)
    rounds = int(OmegaConf.load(searches[0] / "config.yaml").federation.rounds)
    kept.write_text(str(round(rounds * (search_seconds + train_seconds) / search_seconds)))
    return int(kept.read_text())


def equal_time_runs(out: Path, tuning: dict[str, Any], extra: list[str] = ()) -> list[tuple[list[str], Path, Path, str]]:
    rounds = equal_time_rounds(out, tuning)
    runs = []
    for name, seed, overrides, _ in search_runs(out, extra):
        if name == "fedmetanas":
            runs.append(([*overrides, f"federation.rounds={rounds}"], out / "searches" / "fedmetanas_equal_time" /
                         f"s{seed}", out / "run_logs" / f"search-fedmetanas_equal_time-s{seed}.log", "search.py"))
    return runs


def longer_search_runs(out: Path, tuning: dict[str, Any], extra: list[str] = ()) -> tuple[list, list]:
    """(searches, trainings) of the remedy: FedNAS' pick searched LONGER x its rounds, then its cell trained
    at the FedNAS row's learning rate, each at seeds 0-2."""
    method = tuning["methods"]["fednas"]
    if method.get("pick") is None:
        raise DataError("the fednas row has no pick yet: run the tuning stage first")
    searches, trainings = [], []
    for name, seed, overrides, run_dir in search_runs(out, extra):
        if name != "fednas":
            continue
        rounds = LONGER * int(OmegaConf.load(run_dir / "config.yaml").federation.rounds)
        search_dir = out / "searches" / "fednas_longer" / f"s{seed}"
        searches.append(([*overrides, f"federation.rounds={rounds}"], search_dir,
                         out / "run_logs" / f"search-fednas_longer-s{seed}.log", "search.py"))
        trainings.append(([f"experiment={EXPERIMENT}", f"search_run={search_dir}", *method["grid"][method["pick"]]["overrides"],
                           f"task_name={EXPERIMENT}", "logger=none", *extra, f"seed={seed}"],
                          out / "remedy" / "fednas_longer" / f"s{seed}", out / "run_logs" / f"train-fednas_longer-s{seed}.log",
                          "train.py"))
    return searches, trainings


def pack_finished_runs(out: Path, archive: Path = PACKED) -> int:
    """Pack every finished run under ``out`` (``PACKED_FILES`` of each) into ``archive``; returns the run count."""
    import tarfile

    runs = sorted(marker.parent for marker in out.rglob("FINISHED"))
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for run_dir in runs:
            for name in PACKED_FILES:
                if (run_dir / name).is_file():
                    tar.add(run_dir / name, arcname=str((run_dir / name).relative_to(out)))
    tmp.replace(archive)
    return len(runs)


def unpack_finished_runs(out: Path, archive: Path = PACKED) -> int:
    """Unpack the runs of ``archive`` that ``out`` does not hold finished; returns how many were unpacked."""
    import tarfile

    if not archive.is_file():
        return 0
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        runs = {Path(m.name).parent for m in members if Path(m.name).name == "FINISHED"}
        missing = {run for run in runs if not (out / run / "FINISHED").is_file()}
        tar.extractall(out, members=[m for m in members if any(Path(m.name).is_relative_to(r) for r in missing)],
                       filter="data")
    return len(missing)


def run_record(run_dir: Path) -> dict[str, Any]:
    """What the table needs of a finished run: accuracy, parameters of its final model, steps, loop time."""
    from federated_nas.federation.validation import final_metrics
    from federated_nas.tracking.cell_evaluation import client_steps

    last = final_metrics(run_dir)
    record = {"run_dir": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
              "global_test_acc": last["global_test_acc"], "params": last.get("final_model_params", last.get("params")),
              "steps": client_steps(OmegaConf.load(run_dir / "config.yaml")), "seconds": last["elapsed_seconds"]}
    if "alpha_entropy" in last:  # a search's: ln(#ops) is alpha that never moved
        record["alpha_entropy"] = last["alpha_entropy"]
    if (run_dir / "genotype.json").is_file():
        record["genotype"] = json.loads((run_dir / "genotype.json").read_text())
    return record


def finished(run_dir: Path) -> bool:
    return (run_dir / "FINISHED").is_file()


def collect(out: Path) -> dict[str, Any]:
    """evaluation.json: every finished run of every stage, by row and seed (what the table is computed from)."""
    from federated_nas.tracking.cell_evaluation import SEARCHED_METHODS

    tuning_path = out / "tuning" / "tuning.json"
    tuning = json.loads(tuning_path.read_text()) if tuning_path.is_file() else {"methods": {}}
    searches = {name: {seed: run_record(run_dir) for n, seed, _, run_dir in search_runs(out)
                       if n == name and finished(run_dir)} for name in SEARCHED_METHODS}
    trained = {name: {int(seed): run_record(ROOT / record["run_dir"] if not Path(record["run_dir"]).is_absolute()
                                            else Path(record["run_dir"]))
                      for seed, record in method.get("seeds", {}).items()}
               for name, method in tuning["methods"].items()}
    extra = [run_dir for run_dir in sorted((out / "random_cells").glob("g*-s*")) if finished(run_dir)]
    equal_time = {int(run_dir.name[1:]): run_record(run_dir)
                  for run_dir in sorted((out / "searches" / "fedmetanas_equal_time").glob("s*")) if finished(run_dir)}
    longer = {int(run_dir.name[1:]): {"search": run_record(out / "searches" / "fednas_longer" / run_dir.name),
                                      "train": run_record(run_dir)}
              for run_dir in sorted((out / "remedy" / "fednas_longer").glob("s*")) if finished(run_dir)}
    return {"experiment": EXPERIMENT, "searches": searches, "trained": trained, "fednas_longer": longer,
            "picks": {name: method["grid"][method["pick"]]["overrides"] for name, method in tuning["methods"].items()
                      if method.get("pick") is not None},
            "random_cells": {run_dir.name: run_record(run_dir) for run_dir in extra},
            "fedmetanas_equal_time": equal_time}


def table_rows(evaluation: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[int, list[float]]]:
    """The table's rows and the random cells by training seed, from evaluation.json."""
    from federated_nas.tracking.cell_evaluation import SEARCHED_METHODS

    trained, searches = evaluation["trained"], evaluation["searches"]

    def train_only(record: dict[str, Any]) -> dict[str, Any]:
        return {"global_test_acc": record["global_test_acc"], "params": record["params"], "search_steps": 0,
                "train_steps": record["steps"], "search_seconds": 0, "train_seconds": record["seconds"]}

    def search_only(record: dict[str, Any]) -> dict[str, Any]:
        return {"global_test_acc": record["global_test_acc"], "params": record["params"],
                "search_steps": record["steps"], "train_steps": 0, "search_seconds": record["seconds"],
                "train_seconds": 0}

    random_cells: dict[int, list[float]] = {}
    for seed, record in trained.get("random", {}).items():
        random_cells.setdefault(int(seed), []).append(record["global_test_acc"])
    for name, record in evaluation["random_cells"].items():
        random_cells.setdefault(int(name.rsplit("-s", 1)[1]), []).append(record["global_test_acc"])
    rows = []
    for method in SEARCHED_METHODS:
        runs = {}
        for seed, record in trained.get(method, {}).items():
            search = searches.get(method, {}).get(seed) or searches.get(method, {}).get(str(seed))
            runs[int(seed)] = {**train_only(record), **({"search_steps": search["steps"],
                                                         "search_seconds": search["seconds"]} if search else {})}
        rows.append({"name": method, "final_model": "its derived cell, retrained at the budget", "runs": runs})
    rows.append({"name": "fedmetanas", "final_model": "its pruned supernet as shipped (no retraining)",
                 "runs": {int(seed): search_only(record) for seed, record in searches.get("fedmetanas", {}).items()}})
    rows.append({"name": "fedmetanas", "final_model": "its pruned supernet, searched as long as search + retrain",
                 "runs": {int(seed): search_only(record)
                          for seed, record in evaluation["fedmetanas_equal_time"].items()}})
    rows.append({"name": "fednas", "final_model": f"its derived cell after a {LONGER}x longer search, retrained",
                 "runs": {int(seed): {**train_only(pair["train"]), "search_steps": pair["search"]["steps"],
                                      "search_seconds": pair["search"]["seconds"]}
                          for seed, pair in evaluation.get("fednas_longer", {}).items()}})
    all_random = [train_only(record) for record in trained.get("random", {}).values()]
    all_random += [train_only(record) for record in evaluation["random_cells"].values()]
    rows.append({"name": "random cells", "final_model": f"{len(all_random)} random genotypes at the budget",
                 "runs": dict(enumerate(all_random)), "compare": False})
    rows.append({"name": "cnn", "final_model": "the FedAvg paper's CNN scaled to the budget",
                 "runs": {int(seed): train_only(record) for seed, record in trained.get("cnn", {}).items()}})
    return rows, random_cells


def print_table(evaluation: dict[str, Any]) -> None:
    from federated_nas.tracking.cell_evaluation import format_diagnostics, format_evaluation_table

    rows, random_cells = table_rows(evaluation)
    print(format_evaluation_table(rows, random_cells))
    print()
    random_genotypes = [record["genotype"] for record in [*evaluation["trained"].get("random", {}).values(),
                                                          *evaluation["random_cells"].values()] if "genotype" in record]
    print(format_diagnostics(evaluation["searches"], random_genotypes))
    print(f"\nLearning-rate picks (3 points at seed 0 on held-out data): "
          + "; ".join(f"{name} {' '.join(point)}" for name, point in evaluation["picks"].items()))


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out.resolve()
    if args.table:
        source = out / "evaluation.json"
        if not source.is_file() and COMMITTED.is_file():
            print(f"(no evaluation under {out}: the committed {COMMITTED.relative_to(ROOT)})")
            source = COMMITTED
        if not source.is_file():
            raise DataError(f"{source} does not exist: run python scripts/evaluate_cells.py first")
        print_table(json.loads(source.read_text()))
        return
    stages = set(args.stages.split(","))
    unpacked = unpack_finished_runs(out)
    if unpacked:
        print(f"unpacked {unpacked} finished runs from {PACKED.relative_to(ROOT)}")
    if "searches" in stages:
        run_all(args.jobs, [(overrides, run_dir, out / "run_logs" / f"search-{name}-s{seed}.log", "search.py")
                            for name, seed, overrides, run_dir in search_runs(out, args.overrides)])
    if "tuning" in stages:
        tune.tune([f"experiment={EXPERIMENT}", f"search_dir={out / 'searches'}", *args.overrides], out / "tuning",
                  args.jobs)
    tuning = json.loads((out / "tuning" / "tuning.json").read_text()) if (out / "tuning" / "tuning.json").is_file() else None
    later = []
    if "random" in stages and tuning is not None:
        later += extra_random_runs(out, tuning, args.extra_random, args.overrides)
    if "equal_time" in stages and tuning is not None and len(tuning["methods"]["fedmetanas"]["seeds"]) == len(SEEDS):
        later += equal_time_runs(out, tuning, args.overrides)
    run_all(args.jobs, later)
    if "longer_search" in stages and tuning is not None:
        searches, trainings = longer_search_runs(out, tuning, args.overrides)
        run_all(args.jobs, searches)
        run_all(args.jobs, trainings)
    evaluation = collect(out)
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    if args.commit:
        shutil.copyfile(out / "evaluation.json", COMMITTED)
        print(f"packed {pack_finished_runs(out)} finished runs into {PACKED.relative_to(ROOT)}")
    print_table(evaluation)


if __name__ == "__main__":
    main()
