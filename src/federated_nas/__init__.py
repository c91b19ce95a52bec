"""Federated neural architecture search: FedNAS and friends on Lightning + Hydra."""
