"""First-order MAML's settings as one component, as the temperature and pruning schedules are.

FedMetaNAS' local search and its personalization read them (and meta-FedPNAS through it); one
config node (``algorithm.maml``) holds them, so a grid or an override names them in one place.
No Lightning here: the server builds the method without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from federated_nas.errors import ConfigError


@dataclass(frozen=True)
class MAMLSettings:
    """``inner_steps`` SGD steps on the support task at ``inner_lr_w`` (w) and ``inner_lr_alpha`` (alpha), tasks
    of ``task_size`` samples (None: the federation's batch size); ``w_keeps_support_steps``: w keeps its inner
    steps, so the support batch trains w too (the paper's Algorithm 1: false, w moves by the query gradient)."""

    inner_steps: int = 1
    inner_lr_w: float = 0.025
    inner_lr_alpha: float = 0.003
    task_size: int | None = None
    w_keeps_support_steps: bool = False

    def __post_init__(self):
        if not (isinstance(self.inner_steps, int) and self.inner_steps >= 0):
            raise ConfigError(f"algorithm.maml.inner_steps must be an integer >= 0, got {self.inner_steps}")
        for name in ("inner_lr_w", "inner_lr_alpha"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"algorithm.maml.{name} must be > 0, got {getattr(self, name)}")
        if self.task_size is not None and not (isinstance(self.task_size, int) and self.task_size >= 1):
            raise ConfigError(f"algorithm.maml.task_size must be an integer >= 1 or null, got {self.task_size}")
        object.__setattr__(self, "w_keeps_support_steps", bool(self.w_keeps_support_steps))

    def task_batch_size(self, batch_size: int) -> int:
        """Samples per support or query task: ``task_size``, else the round's batch size."""
        return self.task_size or batch_size
