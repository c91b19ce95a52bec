"""What a run's MLflow record holds: the params a researcher varies and sectioned metric names.

The MLflow UI groups charts by the part of a metric name before ``/``, so metrics are sent as
``test/``, ``clients/``, ``arch/``, ``comm/`` and ``time/``. Only what is sent to MLflow is
renamed: the loop's history, the checkpoint and the result dict keep their plain keys
(``global_test_acc``), which scripts and the Hydra sweepers read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SECTIONS = ("test", "clients", "arch", "comm", "time")
GENOTYPE_TAG = "genotype"  # the latest derived architecture, in DARTS' one-line form
GENOTYPE_TABLE = "architecture_history.json"  # (round, genotype, accuracy), one row per round
PERSONALIZATION_TAG = "personalization"  # what a client's personalization cost, in words (personalize=true)

# the last round evaluates on the whole test set; these keys hold that evaluation then, and the
# round curve's point (on federation.global_test_samples) is under "<key>_sampled"
FINAL_EVALUATED = ("global_test_acc", "global_test_loss", "global_test_acc_discrete")
SAMPLED = "_sampled"

EXPLICIT = {
    "global_test_acc_before_pruning": "test/final_acc_before_pruning",  # evaluated at the last round only
    "best_global_test_acc": "test/best_acc",
    "best_round": "test/best_round",
    "clients": "clients/sampled",
    "responders": "clients/responders",
    "dropped_clients": "clients/dropped",
    "round_attempts": "clients/round_attempts",
}

# not params: where things are written (paths, the logger itself), bookkeeping shown elsewhere
# (run name, experiment, resume, figure cadence), and the search space a second time
SKIPPED_PARAMS = ("logger", "paths", "task_name", "run_name", "resume", "plots_every", "algorithm.search_space",
                  "partition.label")
MAX_PARAM_LENGTH = 250  # MLflow rejects longer param values


def metric_name(key: str) -> str:
    """The sectioned MLflow name of a round metric (``client_test_acc_mean`` -> ``clients/test_acc_mean``)."""
    if key in EXPLICIT:
        return EXPLICIT[key]
    if key.startswith("global_test_"):
        return "test/" + key.removeprefix("global_test_")
    if key.endswith("_seconds"):
        return "time/" + key
    if key.startswith("bytes_") or key.endswith("_bytes"):
        return "comm/" + key
    if key.startswith("client_"):
        return "clients/" + key.removeprefix("client_")
    if key.startswith("personalized_"):
        return "clients/" + key
    return "arch/" + key  # the architecture and the model: entropy, skip count, sizes, temperature, pruning


def final_name(key: str) -> str:
    """The MLflow name of a final-round, whole-test-set evaluation (``global_test_acc`` -> ``test/final_acc``)."""
    return "test/final_" + key.removeprefix("global_test_")


def mlflow_metrics(metrics: Mapping[str, Any], final_round: bool = False) -> dict[str, float]:
    """The numeric entries of a round's metrics under their MLflow names.

    At the final round the whole-test-set evaluation goes to ``test/final_*`` and the curve
    ``test/acc`` gets the sampled point, so the curve is measured the same way at every round.
    """
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out: dict[str, float] = {}
    for key, value in numeric.items():
        if key.endswith(SAMPLED) and key.removesuffix(SAMPLED) in FINAL_EVALUATED:
            continue  # the curve's point, placed below
        if final_round and key in FINAL_EVALUATED:
            out[final_name(key)] = value
            out[metric_name(key)] = numeric.get(key + SAMPLED, value)
        else:
            out[metric_name(key)] = value
    return out


def researcher_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The flattened resolved config minus what no one compares runs by (``config.yaml`` keeps it all).

    Left out: Hydra's ``_target_``/``_partial_`` keys, the ``SKIPPED_PARAMS`` subtrees and absolute
    paths (a dataset's directory); values are cut to MLflow's 250 characters.
    """
    params = {}
    for key, value in flatten(config).items():
        parts = key.split(".")
        if any(part.startswith("_") for part in parts):
            continue
        if any(key == skipped or key.startswith(skipped + ".") for skipped in SKIPPED_PARAMS):
            continue
        if isinstance(value, str) and value.startswith("/"):
            continue
        params[key] = str(value)[:MAX_PARAM_LENGTH]
    return params


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b.c": value}, MLflow's flat param namespace."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


DESCRIBED = (  # (result key, label) of the accuracies a run's description lists, when the run has them
    ("global_test_acc", "global test accuracy, whole test set"),
    ("global_test_acc_discrete", "made discrete, whole test set"),
    ("best_global_test_acc", "best round accuracy"),
    ("client_test_acc_mean", "clients' local test accuracy, mean"),
    ("personalized_acc_after_mean", "after personalization, mean"),
)


def run_description(final: Mapping[str, Any], tags: Mapping[str, Any], rounds: int, genotype: str | None = None) -> str:
    """The markdown the UI shows on a run's page: what ran, its final accuracies, its genotype."""
    setting = [str(tags.get(key)) for key in ("algorithm", "dataset") if tags.get(key) is not None]
    partition = {key.removeprefix("partition."): value for key, value in tags.items() if key.startswith("partition.")}
    if tags.get("partition") is not None:
        setting.append(f"{tags['partition']}({', '.join(f'{k}={v}' for k, v in partition.items())})"
                       if partition else str(tags["partition"]))
    setting += [f"{tags.get('num_clients')} clients", f"{rounds} rounds", f"seed {tags.get('seed')}"]
    lines = [f"**{' · '.join(setting)}**", ""]
    for key, label in DESCRIBED:
        if isinstance(final.get(key), (int, float)):
            text = f"{100 * final[key]:.1f}%"
            if key == "best_global_test_acc" and "best_round" in final:
                text += f" (round {final['best_round']})"
            std_key = key.replace("_mean", "_std")
            if std_key != key and isinstance(final.get(std_key), (int, float)):
                text += f" ± {100 * final[std_key]:.1f}"
            lines.append(f"- {label}: {text}")
    if genotype:
        lines += ["", f"Genotype: `{genotype}`"]
    return "\n".join(lines)


def curve_accuracy(metrics: Mapping[str, Any]) -> float | None:
    """A round's point on the accuracy curve: the sampled evaluation where the last round has both."""
    return metrics.get(f"global_test_acc{SAMPLED}", metrics.get("global_test_acc"))


def time_to_accuracy(history: list[Mapping[str, Any]], target: float) -> tuple[int, float] | None:
    """(round, loop seconds) when the accuracy curve first reached ``target``; None where it never did.

    The curve's points (``curve_accuracy``: the sampled evaluation between rounds, kept at the last round too),
    so every round is read on the same images; the seconds are the loop's (``elapsed_seconds``: rounds and
    their evaluations, no start-up)."""
    for metrics in history:
        accuracy = curve_accuracy(metrics)
        if accuracy is not None and accuracy >= target:
            return int(metrics["round"]), float(metrics["elapsed_seconds"])
    return None
