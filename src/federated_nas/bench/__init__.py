"""A tabular federated NAS benchmark: every architecture of a small cell space trained with FedAvg on fixed
non-IID splits, and the API that looks them up (docs/bench.md).

``space``: the architectures and their canonical keys; ``train``: FedAvg of one architecture;
``build``: the resumable build, pilot and finalize; ``table``: ``Bench``, the query API.
"""

from federated_nas.bench.space import BENCH_PRIMITIVES, CellSpace
from federated_nas.bench.table import Bench, Entry

__all__ = ["BENCH_PRIMITIVES", "Bench", "CellSpace", "Entry"]
