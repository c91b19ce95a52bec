"""Objects from config nodes: what a run and a distributed worker both build, the same way.

A worker process rebuilds the method and the data from the run config the server sends it, so these
builders sit below both the run (``runs``) and the backends (``federation``).
"""

from __future__ import annotations

import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from federated_nas.algorithms.core.base import FederatedAlgorithm
from federated_nas.data.federated_data import FederatedData, build_federated_data
from federated_nas.errors import ConfigError, DataError


def build(node: DictConfig, keep_name: bool = False, **kwargs: Any) -> Any:
    """Instantiate a config node, surfacing our own one-line errors from inside constructors.

    A node's ``name`` labels runs and tags, its ``label`` (a partition's ``dir0.5``) run names; ``name``
    is passed on only where it is the target's own argument (``keep_name``, e.g. a dataset's name).
    An algorithm's YAML ``name`` is its one name: the run dir, the MLflow tag and the log all say it.
    """
    spec = OmegaConf.to_container(node, resolve=True)
    spec.pop("label", None)
    name = None if keep_name else spec.pop("name", None)
    try:
        built = instantiate(spec, **kwargs)
        if name is not None and isinstance(built, FederatedAlgorithm):
            built.name = name
        return built
    except InstantiationException as err:
        if isinstance(err.__cause__, (ConfigError, DataError)):
            raise err.__cause__ from None
        unknown = _unknown_setting(node, spec, err.__cause__)
        if unknown:
            raise ConfigError(unknown) from None
        raise


def _unknown_setting(node: DictConfig, spec: dict, cause: BaseException | None) -> str | None:
    """The one line for a setting the target does not take: most often a key an experiment set for the group's
    default option (``partition.alpha`` for dirichlet) left over after switching the option (``partition=iid``)."""
    target = str(spec.get("_target_", ""))
    found = re.fullmatch(rf"{re.escape(target.rsplit('.', 1)[-1])}(\.__init__)?\(\) got an unexpected keyword argument "
                         r"'(\w+)'", str(cause)) if isinstance(cause, TypeError) and target else None
    if not found:
        return None
    path = node._get_full_key(None) if isinstance(node, DictConfig) else ""
    key = f"{path}.{found.group(2)}" if path else found.group(2)
    option = f"{path}={node.get('name')}" if path and node.get("name") else path or "the config node"
    return (f"{key} is not a setting of {option} ({target}); if an experiment set it for another option, "
            f"drop it with '~{key}'")


def build_data(cfg: DictConfig) -> FederatedData:
    dataset = build(cfg.dataset, keep_name=True)
    partition_seed = cfg.get("partition_seed")
    return build_federated_data(dataset, build(cfg.partition), int(cfg.federation.num_clients),
                                int(cfg.seed if partition_seed is None else partition_seed), tuple(cfg.federation.split))


class TrainerFactory:
    """``trainer(**options)``: a Trainer from the config's partial node (``configs/trainer``), built on first use.

    Instantiating the node imports Lightning, which costs seconds; a server whose clients run in
    worker processes never calls it, so it never pays them.
    """

    def __init__(self, node: Any):
        self.node = node
        self._partial: Any = None

    def __call__(self, **options: Any) -> Any:
        if self._partial is None:
            self._partial = instantiate(self.node)
        return self._partial(**options)
