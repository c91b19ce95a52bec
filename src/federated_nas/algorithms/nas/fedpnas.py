"""FedPNAS (Hoang and Kingsford, 2021): shared base cells searched together, personal cells per client.

The supernet's last ``personal_cells`` cells and its classifier, weights and architecture alike,
belong to each client (``search_space.personalized``): a client trains them with the base in its
local search, keeps them across rounds, and sends back the personal part it received, so the
server averages the base alone. The local search and the server's steps are those of another
method, chosen by configuration (``local_search``):

- ``fednas``: MiLeNAS' mixed-level step on base + personal (``algorithm=fedpnas``);
- ``fedmetanas``: FedMetaNAS' first-order MAML step, Gumbel relaxation, input combinations and
  server pruning of the base (``algorithm=meta_fedpnas``, the FedMetaNAS paper's meta-FedPNAS).

``personalize=true`` evaluates each client on the global base with its own personal cells.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Iterable

import torch

from federated_nas.algorithms.core.base import ClientTask, Evaluate, FederatedAlgorithm, RoundPlan, steps_after_rounds
from federated_nas.algorithms.core.local_module import LocalModule
from federated_nas.algorithms.core.personal import KeepPersonalPart, finetune, load_parameter_values
from federated_nas.algorithms.core.supernet_methods import SupernetAlgorithm
from federated_nas.algorithms.nas.fedmetanas import FedMetaNAS
from federated_nas.algorithms.nas.fednas import FedNAS
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError
from federated_nas.search_space.personalized import PersonalizedSearchNetwork, personalized_factory

LOCAL_SEARCHES = {"fednas": FedNAS, "fedmetanas": FedMetaNAS}


class FedPNAS(FederatedAlgorithm):
    """Personal cells on top of a supernet method's search; every other option is that method's."""


    def __init__(self, local_search: str = "fednas", personal_cells: int = 1, new_client_steps: int = 5,
                 new_client_lr: float = 0.025, **search_options: Any):
        if local_search not in LOCAL_SEARCHES:
            raise ConfigError(f"algorithm.local_search must be one of {', '.join(LOCAL_SEARCHES)}, "
                              f"got {local_search!r}")
        if not (isinstance(new_client_steps, int) and new_client_steps >= 0):
            raise ConfigError(f"algorithm.new_client_steps must be an integer >= 0, got {new_client_steps}")
        search_class = LOCAL_SEARCHES[local_search]
        unknown = sorted(set(search_options) - set(inspect.signature(search_class).parameters))
        if unknown:  # e.g. a MAML option left over after switching local_search to fednas
            raise ConfigError(f"algorithm.{unknown[0]} is not an option of algorithm.local_search={local_search}")
        self.search: SupernetAlgorithm = search_class(**search_options)
        self.search.search_space = personalized_factory(self.search.search_space, personal_cells)
        self.new_client_steps, self.new_client_lr = new_client_steps, new_client_lr

    # --- the chosen search, unchanged -------------------------------------------------------
    @property
    def final_params_metric(self) -> str:
        return self.search.final_params_metric

    def build_model(self, data: FederatedData) -> PersonalizedSearchNetwork:
        return self.search.build_model(data)

    def client_loader(self, task: ClientTask) -> Iterable:
        return self.search.client_loader(task)

    def round_report(self, model: PersonalizedSearchNetwork) -> dict[str, Any]:
        return self.search.round_report(model)

    def after_aggregation(self, model: PersonalizedSearchNetwork, round_idx: int, rounds: int,
                          evaluate: Evaluate | None = None) -> dict[str, Any]:
        return self.search.after_aggregation(model, round_idx, rounds, evaluate)

    def server_state(self, model: PersonalizedSearchNetwork) -> dict[str, Any]:
        return self.search.server_state(model)

    def load_server_state(self, model: PersonalizedSearchNetwork, state: dict[str, Any]) -> None:
        self.search.load_server_state(model, state)

    def discrete_model(self, model: PersonalizedSearchNetwork) -> PersonalizedSearchNetwork:
        return self.search.discrete_model(model)

    def prepare_client_model(self, model: PersonalizedSearchNetwork, plan: RoundPlan) -> None:
        self.search.prepare_client_model(model, plan)

    # --- what personal cells add ------------------------------------------------------------
    def local_module(self, model: PersonalizedSearchNetwork, task: ClientTask) -> LocalModule:
        """The search's local step over base + personal, with the client's own personal part swapped in."""
        module = self.search.local_module(model, task)
        module.callbacks.append(KeepPersonalPart(model.personal_names(), kept=task.personal))
        return module

    def personalization_budget(self) -> str:
        return ("personal cells: every local step of the rounds a client takes part in "
                f"(a client never sampled: {steps_after_rounds(self.new_client_steps, 'SGD')})")

    def adapt(self, model: PersonalizedSearchNetwork, task: ClientTask) -> PersonalizedSearchNetwork:
        """The global base with the client's own personal cells.

        A client that never trained has none; it fits the personal part (weights and architecture)
        to the global base with ``new_client_steps`` plain SGD steps at ``new_client_lr``, rather
        than use the untrained personal part the aggregate carries.
        """
        if not task.personal:
            torch.manual_seed(task.seed)  # Gumbel noise, where the relaxation draws any
            return finetune(model, task, self.new_client_steps, self.new_client_lr,
                            lambda adapted: adapted.personal_parameters())
        adapted = copy.deepcopy(model)
        load_parameter_values(adapted, task.personal)
        return adapted.eval()
