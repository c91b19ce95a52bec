"""Federated architecture search: `python src/search.py [algorithm=fednas] [dataset=...] ...`."""

import hydra
from omegaconf import DictConfig

from federated_nas.cli import one_line_errors, quiet_libraries, set_project_root

set_project_root()


@hydra.main(version_base="1.3", config_path="../configs", config_name="search")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    from federated_nas.runs import run_search

    quiet_libraries()
    return run_search(cfg).get("global_test_acc")  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
