"""Build a run from its composed Hydra config and drive it: the body of the entry points.

Everything is built with ``hydra.utils.instantiate`` from the config groups; this module only
decides the order, where the run lives (a new dir or the one being resumed) and what is
logged about it.
"""

from __future__ import annotations

import copy
import json
import logging
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from federated_nas.algorithms.core.base import FederatedAlgorithm
from federated_nas.builders import TrainerFactory, build, build_data
from federated_nas.cli import sweep_job
from federated_nas.config_checks import check_config
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError, DataError, RunStopped
from federated_nas.federation.backends import visible_gpus
from federated_nas.federation.checkpoint import LAST, load_latest_checkpoint, read_checkpoint
from federated_nas.federation.personalization import personalize_clients
from federated_nas.federation.preemption import StopSignals, requeued_slurm_job
from federated_nas.federation.server import FederatedRun, FederationSettings
from federated_nas.tracking.mlflow_tracker import (OpeningTracker, RunTracker, check_tracking_uri, quiet_mlflow,
                                                   store_lock)
from federated_nas.tracking.run_figures import RunFigures
from federated_nas.tracking.run_record import GENOTYPE_TAG, PERSONALIZATION_TAG, run_description

log = logging.getLogger(__name__)
FEDERATION_KEYS = ("num_clients", "split")  # the rest of cfg.federation is FederationSettings
# what a resumed run may set differently from the run it continues: more rounds (to extend it), where and how
# its clients run, where it logs; everything else would silently train another run than the one resumed
RESUME_MAY_CHANGE = ("federation.rounds", "resume", "paths.*", "cluster.*", "logger.*", "trainer.devices",
                     "trainer.accelerator", "plots_every", "hydra.*")


def unfinished_runs(root: Path, pattern: str, exclude: Path) -> list[Path]:
    """Run dirs under ``root`` (``pattern`` + checkpoints/last.pt) with a checkpoint and no FINISHED, oldest first."""
    found = sorted(root.glob(f"{pattern}/checkpoints/{LAST}"), key=lambda p: p.stat().st_mtime)
    runs = [p.parent.parent for p in found]
    return [run for run in runs if run != exclude and not (run / "FINISHED").exists()]


def without_resume(overrides: Any) -> list[str]:
    """A job's command-line overrides minus ``resume=...``, in a canonical order."""
    return sorted(str(o) for o in overrides if not str(o).lstrip("+~").startswith("resume="))


def own_sweep_run(hydra_cfg: Any, output_dir: Path) -> Path | None:
    """This sweep job's newest unfinished run in any sweep of its task, or None.

    A sweep job's dir is ``<task>/multiruns/<time>/<job>``: the new sweep's dir holds no run of this
    job, and its siblings ran other configs. A run is this job's when its saved
    ``.hydra/overrides.yaml`` lists this job's overrides, ``resume`` aside.
    """
    sweep_dir, output_dir = Path(hydra_cfg.sweep.dir).resolve(), output_dir.resolve()
    depth = len(output_dir.relative_to(sweep_dir).parts) if output_dir.is_relative_to(sweep_dir) else 1
    wanted = without_resume(hydra_cfg.overrides.task)
    mine = [run for run in unfinished_runs(sweep_dir.parent, "/".join(["*"] * (depth + 1)), output_dir)
            if (run / ".hydra" / "overrides.yaml").is_file()
            and without_resume(OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml"))) == wanted]
    return mine[-1] if mine else None


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, dict[str, Any] | None]:
    """(run dir, checkpoint to resume from or None) for ``resume`` = false, true or a run dir.

    Inside a sweep, ``resume=true`` continues each job's own unfinished run (``own_sweep_run``); a job
    that has none (it finished, or never started) starts a new run, so a killed sweep is resumed whole.
    """
    output_dir = Path(cfg.paths.output_dir)
    if cfg.resume in (False, None):
        restarts = requeued_slurm_job()
        if not restarts or not (output_dir / "checkpoints" / LAST).is_file() or (output_dir / "FINISHED").exists():
            return output_dir, None
        log.info("SLURM requeued this job (restart %d): continuing its run %s", restarts, output_dir)
        check_resume_settings(cfg, output_dir)
        return output_dir, load_latest_checkpoint(output_dir / "checkpoints")
    job = sweep_job() if cfg.resume is True else None
    if job is not None:
        run_dir = own_sweep_run(job, output_dir)
        if run_dir is None:
            log.info("resume=true: no unfinished run of this sweep job's overrides; starting a new one")
            return output_dir, None
    elif cfg.resume is True:
        unfinished = unfinished_runs(output_dir.parent, "*", output_dir)
        if not unfinished:
            raise ConfigError(f"resume=true but no unfinished run named {cfg.run_name!r} under {output_dir.parent}")
        run_dir = unfinished[-1]
    else:
        run_dir = Path(str(cfg.resume))
    checkpoint = load_latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise ConfigError(f"resume={cfg.resume}: {run_dir} has no checkpoint to resume from")
    check_resume_settings(cfg, run_dir)
    return run_dir, checkpoint


def flat_settings(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a plain (resolved) config as dotted key -> value."""
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in flat_settings(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def check_resume_settings(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to resume with settings that differ from the saved run's, naming each key (both values); only
    ``RESUME_MAY_CHANGE`` may differ. Settings the saved run does not have (added by a newer version) pass."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = flat_settings(OmegaConf.to_container(OmegaConf.load(saved_file), resolve=False))
    current = flat_settings(OmegaConf.to_container(cfg, resolve=True))
    differing = [f"{key} (saved {saved[key]!r}, now {current.get(key, '<unset>')!r})"
                 for key in sorted(saved) if current.get(key, "<unset>") != saved[key]
                 and not any(fnmatchcase(key, pattern) for pattern in RESUME_MAY_CHANGE)]
    if differing:
        raise ConfigError(f"resume: {run_dir} was run with other settings: {'; '.join(differing)}; "
                          "resume with its own (federation.rounds, cluster, logger and paths may change) or start a new run")


def server_device(cfg: DictConfig) -> str:
    return "cuda" if visible_gpus(cfg.trainer.accelerator) else "cpu"


def run_tags(cfg: DictConfig, algorithm: FederatedAlgorithm) -> dict[str, Any]:
    """Tags to filter runs by; ``final_model`` names the metric ``final_model_params`` repeats, and
    ``personalization`` what a client's personalization cost (runs with personalize=true)."""
    partition = {k: v for k, v in cfg.partition.items() if not str(k).startswith("_") and k != "label"}
    tags = {"algorithm": algorithm.name, "dataset": cfg.dataset.name, "num_clients": cfg.federation.num_clients,
            "seed": cfg.seed, "final_model": algorithm.final_params_metric,
            **{f"partition.{k}" if k != "name" else "partition": v for k, v in partition.items()}}
    if cfg.get("personalize"):
        tags[PERSONALIZATION_TAG] = algorithm.personalization_budget()
    return tags


def build_backend(cfg: DictConfig) -> Any:
    """The execution backend; a distributed one keeps the run config its workers rebuild data and method from."""
    backend = instantiate(cfg.cluster.backend, trainer=TrainerFactory(cfg.trainer))
    backend.prepare(cfg)
    return backend


def run_federated(cfg: DictConfig, algorithm, tags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Shared by search and train: data, tracker, loop, resume, artifacts; ``tags`` join the run's own."""
    device = server_device(cfg)  # a GPU asked for but not there fails here, before the backend and the data load
    backend = build_backend(cfg)
    if backend.is_worker:
        backend.serve(algorithm)  # a torchrun / SLURM rank other than 0: runs clients for rank 0, writes nothing
        return {}
    if cfg.get("personalize") and type(algorithm).adapt is FederatedAlgorithm.adapt:
        raise ConfigError(f"personalize=true: algorithm {algorithm.name} defines no personal adaptation")
    if cfg.get("logger"):
        check_tracking_uri(cfg.logger.get("tracking_uri"))  # before hours of search, not after
    bench = load_bench(cfg)  # a bad table fails before the search, not after it
    run_dir, checkpoint = resolve_run_dir(cfg)
    settings = FederationSettings(**{k: v for k, v in cfg.federation.items() if k not in FEDERATION_KEYS})
    plots_every = cfg.get("plots_every")
    data = build_data(cfg)
    # the model is built before anything is written: bad input leaves no run dir and no MLflow run
    run = FederatedRun(algorithm, data, backend, settings, run_dir, int(cfg.seed), device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    own_tags = run_tags(cfg, algorithm)
    tags = {**own_tags, **fixed_network_tags(run.model, run_dir), **(tags or {})}
    tracker = start_tracking(cfg, checkpoint, data, run_dir, tags)
    figures = RunFigures(run_dir, tracker, plots_every, str(cfg.run_name)) if plots_every is not None else None
    run.attach(tracker, figures)
    with StopSignals() as stop:
        run.stop = stop
        try:
            if checkpoint is not None:
                run.restore(checkpoint)
            final = run.run()
            if cfg.get("personalize"):
                final.update(personalize_clients(algorithm, run.model, data, settings.batch_size,
                                                 settings.eval_batch_size, run.device, int(cfg.seed),
                                                 settings.rounds, run_dir, tracker, run.personal))
            model_id = tracker.log_final_model(run.model, final, settings.rounds)
        except BaseException as err:
            tracker.finish("KILLED" if stop.requested else "FAILED")
            if stop.requested and not isinstance(err, (RunStopped, KeyboardInterrupt)):
                # a SIGTERM inside a client's fit: Lightning ended the fit; the last whole round's checkpoint stands
                raise RunStopped(stop.name, stop.exit_code, len(run.history), str(run_dir)) from None
            raise
        finally:
            backend.close()  # stops any worker processes, after a failure too
    (run_dir / "FINISHED").touch()
    if bench is not None:
        final.update(score_on_bench(cfg, bench, run_dir, tracker, settings.rounds))
    genotype = repr(run.latest_genotype) if run.latest_genotype is not None else None
    tracker.describe(run_description(final, own_tags, settings.rounds, genotype))
    tracker.finish()
    final.update(run_dir=str(run_dir), mlflow_run_id=tracker.run_id, mlflow_artifacts=tracker.artifact_uri,
                 mlflow_model_id=model_id)
    log.info(summary(final))
    return final


def load_bench(cfg: DictConfig) -> Any:
    """The benchmark table ``bench_table`` names (checksum verified), or None (``check_together`` has made sure
    the run searches the benchmark's space)."""
    if not cfg.get("bench_table"):
        return None
    from federated_nas.bench import Bench
    from federated_nas.tracking.bench_score import split_of

    bench = Bench.load(cfg.bench_table)
    if split_of(cfg) not in bench.splits:
        raise ConfigError(f"bench_table={cfg.bench_table} has the splits {', '.join(bench.splits)}; this run's "
                          f"partition ({cfg.partition.get('label', cfg.partition.name)}) is none of them")
    return bench


def score_on_bench(cfg: DictConfig, bench: Any, run_dir: Path, tracker: Any, rounds: int) -> dict[str, Any]:
    """The benchmark's cheap mode: the derived architecture's ground truth looked up, not retrained, and
    logged as ``bench/*`` with the run (``bench_score.json`` in the run dir too)."""
    from federated_nas.tracking.bench_score import score_search

    score = score_search(run_dir, read_checkpoint(run_dir / "checkpoints" / LAST), bench)
    (run_dir / "bench_score.json").write_text(json.dumps(score.as_dict(), indent=2))
    if tracker.logger is not None:
        tracker.logger.log_metrics(score.metrics(), step=rounds)
        tracker.set_tags(score.tags(cfg.bench_table))
    log.info("benchmark look-up:\n%s", score.summary())
    return {"bench_accuracy": score.accuracy, "bench_percentile": score.percentile, "bench_regret": score.regret}


def fixed_network_tags(model: Any, run_dir: Path) -> dict[str, Any]:
    """What a train-stage network states about itself: its genotype (searched, random or given), saved as
    the run's genotype.json like a search's, and its size (``size_record``: the budget, the width chosen)."""
    from federated_nas.search_space.genotypes import ArchitectureRecord

    tags: dict[str, Any] = {f"model.{key}": value for key, value in getattr(model, "size_record", {}).items()}
    genotype = getattr(model, "genotype", None)
    if isinstance(genotype, ArchitectureRecord):  # a search network's genotype is a method, not a record
        genotype.save(run_dir / "genotype.json")
        tags[GENOTYPE_TAG] = repr(genotype)
    return tags


def start_tracking(cfg: DictConfig, checkpoint: dict[str, Any] | None, data: FederatedData, run_dir: Path,
                   tags: dict[str, Any]) -> OpeningTracker:
    """The run's tracker, opened beside round 1 (``OpeningTracker``); a new run's start is recorded there too.

    The thread gets a copy of the config and the tags made here, so it shares nothing the loop changes.
    """
    cfg = copy.deepcopy(cfg)
    uri = cfg.logger.get("tracking_uri") if cfg.get("logger") else None
    run_id = (checkpoint or {}).get("mlflow_run_id") or None
    job = sweep_job()
    sweep_dir = str(Path(job.runtime.output_dir).parent) if job is not None and checkpoint is None else None

    def open_and_record() -> RunTracker:
        if cfg.get("logger"):
            quiet_mlflow()  # before the logger's client opens (and may create) the store
        with store_lock(uri):  # concurrent sweep jobs
            tracker = RunTracker(instantiate(cfg.logger, run_id=run_id) if cfg.get("logger") else None)
            if sweep_dir is not None:
                tracker.join_sweep(sweep_dir)  # the sweep dir as made on disk
        if checkpoint is None:
            try:
                record_run_start(tracker, cfg, data, run_dir, tags)
            except BaseException:
                tracker.finish("FAILED")  # the run is opened: mark it, as its first use will raise this
                raise
        return tracker

    return OpeningTracker(open_and_record)


def record_run_start(tracker: RunTracker, cfg: DictConfig, data: FederatedData, run_dir: Path,
                     tags: dict[str, Any]) -> None:
    """What a new run records before its results: config, tags, the partition (files and heatmap)."""
    from federated_nas.tracking.plots import plot_partition_heatmap  # matplotlib's import: on this thread too

    tracker.log_config(cfg)
    tracker.set_tags(tags)
    tracker.log_artifact(run_dir / "config.yaml")
    if GENOTYPE_TAG in tags and (run_dir / "genotype.json").is_file():  # a train stage's network
        tracker.log_artifact(run_dir / "genotype.json")
    partition_files = data.save_partition(run_dir / "partition")
    heatmap = plot_partition_heatmap(data.class_counts, run_dir / "partition" / "partition_heatmap.png",
                                     title="Samples per class and client")
    for path in [*partition_files, heatmap]:
        tracker.log_artifact(path, "partition")
    tracker.log_data_setting(f"{cfg.dataset.name}-{cfg.partition.get('label', cfg.partition.name)}",
                             partition_files[0], {role: [len(getattr(client, role)) for client in data.clients]
                                                  for role in ("train", "val", "test")})


def summary(final: dict[str, Any]) -> str:
    """The one screen a user reads when the run ends."""
    lines = ["run finished"]
    for key in ("global_test_acc", "global_test_acc_discrete", "best_global_test_acc", "best_round",
                "client_test_acc_mean", "client_test_acc_std", "personalized_acc_before_mean",
                "personalized_acc_after_mean", "derived_params", "supernet_params", "params", "final_model_params",
                "elapsed_seconds"):
        if key in final:
            lines.append(f"  {key}: {final[key]:.4g}" if isinstance(final[key], float) else f"  {key}: {final[key]}")
    if "genotype" in final:
        lines.append(f"  genotype: {final['genotype']}")
    lines.append(f"  run dir: {final['run_dir']} (config, partition, genotype, figures, checkpoints)")
    if final.get("mlflow_run_id"):
        lines.append(f"  MLflow run: {final['mlflow_run_id']} (make mlflow-ui)")
        lines.append(f"  MLflow artifacts: {final['mlflow_artifacts']}")
        if final.get("mlflow_model_id"):
            lines.append(f"  MLflow model: models:/{final['mlflow_model_id']} (mlflow.pytorch.load_model)")
    return "\n".join(lines)


def run_search(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    return run_federated(cfg, build(cfg.algorithm))


def genotype_of_search(search_run: str, tracking_uri: str | None) -> Path:
    """The genotype.json a search saved: from its run dir (or the file itself), else by MLflow run id."""
    candidate = Path(search_run)
    for path in (candidate, candidate / "genotype.json"):
        if path.is_file():
            return path
    if candidate.exists():
        raise DataError(f"search_run={search_run}: no genotype.json there; was it a search run that finished a round?")
    if tracking_uri is None:
        raise DataError(f"search_run={search_run} is not a path, and no MLflow store is configured to look it up")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return Path(MlflowClient(tracking_uri).download_artifacts(search_run, "genotype.json"))
    except MlflowException as err:
        raise DataError(f"search_run={search_run}: not a run dir and not an MLflow run with a genotype.json "
                        f"in {tracking_uri} ({str(err).splitlines()[0]})") from None


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """The FedNAS second stage: FedAvg on the network of the genotype a search found (``search_run``), or on a
    genotype given as ``model.genotype`` (a genotype.json, or ``random``), or on any fixed network (``model=cnn``)."""
    check_config(cfg)
    if not cfg.get("search_run"):
        if cfg.get("model") is not None and "genotype" in cfg.model and cfg.model.genotype is None:
            raise ConfigError("search_run is required (the run dir or MLflow run id of a finished search), "
                              "or model.genotype=<genotype.json>|random")
        return run_federated(cfg, build(cfg.algorithm), genotype_source_tag(cfg))
    tracking_uri = cfg.logger.tracking_uri if cfg.get("logger") else None
    genotype_path = genotype_of_search(str(cfg.search_run), tracking_uri)
    OmegaConf.update(cfg, "model.genotype", str(genotype_path), force_add=True)
    log.info("training the genotype of %s", genotype_path)
    search_id = search_run_id(str(cfg.search_run), genotype_path)
    tags = {"genotype_source": "search", **({"search_run_id": search_id} if search_id else {})}
    return run_federated(cfg, build(cfg.algorithm), tags)


def genotype_source_tag(cfg: DictConfig) -> dict[str, Any]:
    """Where a train run's architecture came from, to filter runs by (``tags.genotype_source = 'random'``)."""
    genotype = OmegaConf.select(cfg, "model.genotype")
    if genotype is None:
        return {}
    if str(genotype) == "random":
        return {"genotype_source": "random", "genotype_seed": int(cfg.model.get("genotype_seed", 0))}
    return {"genotype_source": "file"}


def search_run_id(search_run: str, genotype_path: Path) -> str | None:
    """The MLflow run id of the search a train stage continues: given, or kept in that search's checkpoint.

    Tagged on the train run (``search_run_id``), so the UI filters a search's retrainings with
    ``tags.search_run_id = '<id>'``.
    """
    if not Path(search_run).exists():
        return search_run  # genotype_of_search found it in MLflow by this id
    checkpoint = load_latest_checkpoint(genotype_path.parent / "checkpoints")
    return (checkpoint or {}).get("mlflow_run_id") or None

