"""Clients on several processes: rank 0 is the server, ranks 1..W are workers, over torch.distributed.

The transport is gloo on CPU tensors, also on GPU machines: an update is a few megabytes sent
once per client and round, so NCCL would gain nothing, and gloo can notice a dead peer (its
connection closes) and give up on a receive after a time limit, which the fault handling needs.
Each worker runs its clients through its own ``LocalBackend`` (the clients' work is the same
code as ``cluster=local``), on its own GPU when there are GPUs (its ``LOCAL_RANK``, or its
worker index when the server spawned it).

Launch modes (``cluster.backend.launch``):

* ``spawn`` (``cluster=multiprocess``): the server starts ``workers`` processes itself and they
  meet over ``tcp://127.0.0.1:<free port>``. Each child rebuilds the data and the method from
  the resolved run config it is given at start-up (the only pickle). A worker that dies or
  stays silent past its time limit is dropped; the run goes on with the others.
* ``env`` (``cluster=torchrun``, ``cluster=slurm_distributed``): every rank runs the entry
  point; rank 0 runs the normal run, the others serve it and return without writing anything.
  torchrun's agent ends the whole group when one process dies. SLURM (default KillOnBadExit=0)
  leaves the other tasks running, so the server drops a dead worker task and finishes the run.

Modules: ``wire`` (a state dict as tensors), ``messages`` (framed sends and receives between
two ranks, a client's outcome, a round's command), ``worker`` (a worker's life), ``backend``
(the server side: ``DistributedBackend``).
"""

from federated_nas.federation.distributed.backend import DistributedBackend

__all__ = ["DistributedBackend"]
