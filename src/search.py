"""Federated architecture search: `python src/search.py [algorithm=fednas] [dataset=...] ...`."""

import hydra
from omegaconf import DictConfig

from federated_nas.cli import one_line_errors, set_project_root
from federated_nas.compat import quiet_libraries
from federated_nas.config_checks import check_config

set_project_root()


@hydra.main(version_base="1.3", config_path="../configs", config_name="search")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    check_config(cfg)  # in a second, before torch and the data load
    from federated_nas.runs import run_search

    quiet_libraries()
    return run_search(cfg).get("global_test_acc")  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
