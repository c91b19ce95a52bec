"""What the AVX2 fix costs: stride-2 1x1 convs as strided convs (before) or as half_grid + stride-1 convs (now).

    python scripts/bench_half_grid.py [--threads 1]

One supernet step (forward, backward, SGD; C=8, 5 layers, batch 64, 28x28x3, softmax relaxation) with
the factorized reductions computed both ways, alternating in one process so the ratio holds on a noisy
machine. Run it only where oneDNN's strided kernel is safe (not under ONEDNN_MAX_CPU_ISA=AVX2).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from federated_nas.search_space.operations import FactorizedReduce
from federated_nas.search_space.supernet import EdgeBundle, SearchNetwork


def shifted_by_one(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))


def strided_factorized_reduce(self: FactorizedReduce, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(x)
    return self.bn(torch.cat([F.conv2d(x, self.conv_a.weight, None, 2),
                              F.conv2d(shifted_by_one(x), self.conv_b.weight, None, 2)], 1))


def strided_reduce_skip(self: EdgeBundle, replicated: torch.Tensor, groups: int, positions=None) -> torch.Tensor:
    half = self.c // 2
    a = F.conv2d(replicated, self._weight("skip_a", positions, half), None, 2, 0, 1, groups)
    b = F.conv2d(shifted_by_one(replicated), self._weight("skip_b", positions, half), None, 2, 0, 1, groups)
    n, _, h, w = a.shape
    both = torch.stack([a.view(n, groups, half, h, w), b.view(n, groups, half, h, w)], dim=2)
    return self._batch_norm("skip_bn", both.view(n, groups * self.c, h, w), positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = SearchNetwork(3, 10, C=8, layers=5)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(64, 3, 28, 28), torch.randint(0, 10, (64,))
    paths = {"strided (before)": (strided_factorized_reduce, strided_reduce_skip),
             "half_grid (now)": (FactorizedReduce.forward, EdgeBundle._reduce_skip)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, (reduce_forward, reduce_skip) in paths.items():
            FactorizedReduce.forward, EdgeBundle._reduce_skip = reduce_forward, reduce_skip
            started = time.perf_counter()
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
            times[name].append(time.perf_counter() - started)
    before, now = (statistics.median(t[1:]) for t in times.values())
    print(f"threads={args.threads}: strided {before:.3f} s, half_grid {now:.3f} s per step; "
          f"half_grid / strided = {now / before:.3f}")


if __name__ == "__main__":
    main()
