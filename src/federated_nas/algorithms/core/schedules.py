"""Per-round schedules of the supernet methods, as components: ``algorithm.temperature`` and
``algorithm.pruning`` are config nodes that Hydra instantiates into these objects.

A schedule is a pure function of (round, rounds): it holds its settings, never a position, so a
resumed run applies exactly the values of an uninterrupted one. ``apply`` sets a round's value on
the model a client or the server holds and returns what it did, for the round's metrics; the
server's checkpoint keeps the temperature it last applied (``federation.server``), for evaluation
after the last round.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from federated_nas.errors import ConfigError
from federated_nas.search_space.relaxations import anneal
from federated_nas.search_space.supernet import SearchNetwork

TEMPERATURE_CLOCKS = ("rounds", "task")


class TemperatureSchedule:
    """A relaxation temperature annealed from ``start`` to ``end`` (``linear``, ``exponential`` or ``cosine``).

    ``clock: rounds`` anneals once over the run (one value per round). ``clock: task`` anneals over each
    task's inner steps, restarting at every task, as MetaNAS' scripts do (their ``curr_step`` is reset
    per task): the inner steps run from ``start`` towards ``end`` and the query, the server and
    evaluation use ``end``.
    """

    def __init__(self, start: float = 1.0, end: float = 0.1, shape: str = "linear", clock: str = "rounds"):
        self.start, self.end, self.shape, self.clock = start, end, shape, clock
        try:  # a bad schedule fails now, with one line, not at the first round
            if clock not in TEMPERATURE_CLOCKS:
                raise ValueError(f"clock must be one of {', '.join(TEMPERATURE_CLOCKS)}, got {clock!r}")
            if not all(isinstance(t, (int, float)) and t > 0 for t in (start, end)):
                raise ValueError("start and end must be positive numbers")
            anneal(start, end, round_idx=0, rounds=1, shape=shape)
        except (TypeError, ValueError) as err:
            settings = {"start": start, "end": end, "shape": shape, "clock": clock}
            raise ConfigError(f"algorithm.temperature={settings}: {err}") from None

    def temperature_at(self, round_idx: int, rounds: int) -> float:
        """The round's temperature: what the server evaluates and, ``clock: rounds``, what clients train at."""
        if self.clock == "task":
            return float(self.end)
        return anneal(self.start, self.end, round_idx, rounds, self.shape)

    def task_temperatures(self, inner_steps: int) -> list[float] | None:
        """``clock: task``: the temperature of each inner step, then of the query (``end``); else None."""
        if self.clock != "task":
            return None
        return [anneal(self.start, self.end, step, inner_steps + 1, self.shape)
                for step in range(inner_steps)] + [float(self.end)]

    def apply(self, model: SearchNetwork, round_idx: int, rounds: int) -> dict[str, Any]:
        model.relaxation.temperature = self.temperature_at(round_idx, rounds)
        return {"temperature": model.relaxation.temperature}


class PruningSchedule:
    """Soft pruning decided by the server on the aggregated architecture, after fractions ``at`` of the rounds.

    At each scheduled round every op (and input combination) whose probability is under ``threshold``
    leaves the model for good, so every client receives the same smaller supernet (pruned state
    dicts travel with their masks). Nothing is scheduled when ``at`` is empty.
    """

    def __init__(self, at: Iterable[float] = (0.5, 0.75, 1.0), threshold: float = 0.01):
        self.at, self.threshold = list(at), threshold
        if any(not 0 < f <= 1 for f in self.at):
            raise ConfigError(f"algorithm.pruning.at holds fractions of the rounds in (0, 1], got {self.at}")

    def rounds_due(self, rounds: int) -> set[int]:
        return {max(int(round(f * rounds)) - 1, 0) for f in self.at}

    def apply(self, model: SearchNetwork, round_idx: int, rounds: int) -> dict[str, Any]:
        """Prune ``model`` when ``round_idx`` is scheduled; the counts removed, to log."""
        if round_idx not in self.rounds_due(rounds):
            return {}
        removed = model.prune(self.threshold)
        return {"pruned_ops": removed["ops"], "pruned_combinations": removed["combinations"]}


def as_component(kind: type, settings: Any) -> Any:
    """A component (a schedule, MAML's settings) from what a config or a caller gives: the object itself, a
    mapping of its settings (a node without ``_target_``, or a test's dict), or None (the method has none)."""
    if settings is None or isinstance(settings, kind):
        return settings
    if isinstance(settings, Mapping):
        try:
            return kind(**settings)
        except TypeError as err:  # a key the schedule does not know
            raise ConfigError(f"algorithm: {kind.__name__} settings {dict(settings)}: {err}") from None
    raise ConfigError(f"algorithm: expected a {kind.__name__} or its settings, got {settings!r}")
