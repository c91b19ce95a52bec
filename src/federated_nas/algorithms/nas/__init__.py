"""The federated architecture-search methods, one module each (their YAML: configs/algorithm/)."""
