"""FedPNAS' supernet: shared base cells, then personal cells with an architecture of their own.

The last ``personal_cells`` cells and the classifier are each client's own: their weights and
their architecture parameters (``alpha_personal_<kind>``, with input combinations also
``beta_personal_<kind>``) stay on the client and are never averaged. They live in
``personal_cells``, outside ``cells``, so everything ``SearchNetwork`` does to its cells (pruning,
``match_structure``, ``discretized``) acts on the shared base alone: personal cells are never
pruned, because the server never sees a client's personal architecture.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from federated_nas.errors import ConfigError
from federated_nas.search_space.genotypes import Genotype, derive_genotype
from federated_nas.search_space.supernet import CELL_KINDS, SearchNetwork

PERSONAL_PREFIXES = ("personal_cells.", "classifier.", "alpha_personal_", "beta_personal_")


def _always_live(parameter: str) -> property:
    """A mask keeping every choice of ``parameter``: what the generic relaxation code reads for personal choices."""
    return property(lambda self: torch.ones_like(getattr(self, parameter), dtype=torch.bool))


class PersonalizedSearchNetwork(SearchNetwork):
    """A ``SearchNetwork`` whose last ``personal_cells`` cells and classifier are personal.

    ``genotype()`` stays the shared base's genotype; ``personal_genotype()`` is a client's.
    """

    op_mask_personal_normal = _always_live("alpha_personal_normal")
    op_mask_personal_reduce = _always_live("alpha_personal_reduce")
    combo_mask_personal_normal = _always_live("beta_personal_normal")
    combo_mask_personal_reduce = _always_live("beta_personal_reduce")

    def __init__(self, *args, personal_cells: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tie_cells:  # its personal cells keep a normal and a reduce architecture of their own
            raise ConfigError("FedPNAS' personal cells are searched per cell kind: a search_space with tie_cells "
                              "(the benchmark's one-cell space) is not supported")
        layers = len(self.cells)
        check_personal_cells(personal_cells, layers)
        cells = list(self.cells)
        self.cells = nn.ModuleList(cells[: layers - personal_cells])
        self.personal_cells = nn.ModuleList(cells[layers - personal_cells:])
        self.alpha_personal_normal = nn.Parameter(1e-3 * torch.randn_like(self.alpha_normal))
        self.alpha_personal_reduce = nn.Parameter(1e-3 * torch.randn_like(self.alpha_reduce))
        if self.combinations is not None:
            self.beta_personal_normal = nn.Parameter(1e-3 * torch.randn_like(self.beta_normal))
            self.beta_personal_reduce = nn.Parameter(1e-3 * torch.randn_like(self.beta_reduce))

    # --- parameters -------------------------------------------------------------------------
    def personal_arch_parameters(self) -> list[nn.Parameter]:
        params = [self.alpha_personal_normal, self.alpha_personal_reduce]
        if self.combinations is not None:
            params += [self.beta_personal_normal, self.beta_personal_reduce]
        return params

    def arch_parameters(self) -> list[nn.Parameter]:
        return super().arch_parameters() + self.personal_arch_parameters()

    def personal_names(self) -> list[str]:
        """State-dict names of the personal part (weights, BatchNorm statistics, architecture)."""
        return [name for name in self.state_dict() if name.startswith(PERSONAL_PREFIXES)]

    def personal_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name.startswith(PERSONAL_PREFIXES)]

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {kind: self.op_weights(kind) for kind in CELL_KINDS}
        weights.update({f"personal_{kind}": self.op_weights(f"personal_{kind}") for kind in CELL_KINDS})
        skip_zero = getattr(self.relaxation, "one_hot", False)  # as SearchNetwork: a sampled child alone
        s0 = s1 = self.stem(x.contiguous(memory_format=torch.channels_last))
        for prefix, cells in (("", self.cells), ("personal_", self.personal_cells)):
            for cell in cells:
                s0, s1 = s1, cell(s0, s1, weights[prefix + ("reduce" if cell.reduction else "normal")], skip_zero)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    # --- architecture ------------------------------------------------------------------------
    def personal_genotype(self) -> Genotype:
        """The personal cells' genotype, DARTS' derivation over this client's personal architecture."""
        return derive_genotype(self.alpha_personal_normal, self.alpha_personal_reduce, self.steps, self.multiplier,
                               self.primitives,
                               chosen={kind: self.chosen_sources(f"personal_{kind}") for kind in CELL_KINDS})


def check_personal_cells(personal_cells: int, layers: int | None) -> None:
    """At least one cell stays shared: otherwise nothing but the stem would be federated."""
    if not (isinstance(personal_cells, int) and personal_cells >= 0 and (layers is None or personal_cells < layers)):
        bound = f"in [0, search_space.layers - 1 = {layers - 1}]" if layers is not None else ">= 0"
        raise ConfigError(f"algorithm.personal_cells must be an integer {bound}, got {personal_cells}")


def personalized_factory(search_space: Callable[..., SearchNetwork], personal_cells: int
                         ) -> Callable[..., PersonalizedSearchNetwork]:
    """The same supernet factory (a ``SearchNetwork`` class or a partial of one), building the personalized network."""
    func, args, keywords = search_space, (), {}
    if isinstance(search_space, functools.partial):
        func, args, keywords = search_space.func, search_space.args, search_space.keywords
    if not (isinstance(func, type) and issubclass(func, SearchNetwork)):
        name = getattr(func, "__name__", type(func).__name__)
        raise ConfigError(f"personal cells need the DARTS cell search space (search_space=darts), got {name}")
    check_personal_cells(personal_cells, keywords.get("layers"))  # before any run dir exists
    return functools.partial(PersonalizedSearchNetwork, *args, personal_cells=personal_cells, **keywords)
