"""The federated methods, in three folders:

- ``core/``: the contract with the federated loop (``base``), the local-step skeleton and update rules
  (``local_module``, ``local_steps``, ``maml``, ``reinforce``), aggregation, schedules, what the supernet
  methods share (``supernet_methods``) and personal parts (``personal``). Core imports no method.
- ``nas/``: the architecture-search methods (FedNAS, FedMetaNAS, FedDARTS, FedDSNAS, FedRLNAS,
  PerFedRLNAS, FedPNAS), each one module.
- ``baselines/``: the fixed-network and personalization baselines (FedAvg, FedProx, Ditto, Per-FedAvg,
  FedRep, FedBABU).
"""
