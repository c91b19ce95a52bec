"""Where a supernet step's oneDNN time goes, by kernel: the tool behind the AVX2 slowdown in benchmarks/README.md.

    python scripts/onednn_kernels.py [--isa AVX2] [--batch 16] [--top 12]

Runs one warm-up and one measured plain step (``bench_supernet.py``'s: forward, backward, SGD; its
``small`` setting, C=8, 5 layers, 28x28x3, softmax relaxation, cut to ``--batch``, 1 thread) of the
fast supernet in a child process with ONEDNN_VERBOSE=1 (and
ONEDNN_MAX_CPU_ISA when ``--isa`` is given), then sums the measured step's primitive times by
(primitive, implementation, direction). A slow generic kernel (``x64:gemm:jit``) standing in for a
specialised one shows up at the top, with the shapes it ran on.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
STEP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {scripts!r})
    from bench_supernet import plain_models, plain_step, torch_threads
    with torch_threads(1):
        models, optimizers, x, y = plain_models("small")
        for step in range(2):
            print("onednn_kernels: step", step, flush=True)
            plain_step(models["fast"], optimizers["fast"], x[:{batch}], y[:{batch}])
""")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA for the step (e.g. AVX2); default: the CPU's")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--top", type=int, default=12, help="rows of the table")
    return parser.parse_args(argv)


def measured_step_lines(verbose: str) -> list[list[str]]:
    """The ``exec`` records of the second step, each split into its comma-separated fields."""
    step, records = -1, []
    for line in verbose.splitlines():
        if line.startswith("onednn_kernels: step"):
            step = int(line.split()[-1])
        elif step == 1 and line.startswith("onednn_verbose") and ",exec," in line:
            records.append(line.split(","))
    return records


def by_kernel(records: list[list[str]]) -> tuple[dict[tuple[str, str, str], float], dict[tuple, list[str]]]:
    """Milliseconds per (primitive, implementation, direction), and the slowest shapes of each."""
    total: dict[tuple[str, str, str], float] = collections.Counter()
    shapes: dict[tuple, list[tuple[float, str]]] = collections.defaultdict(list)
    for fields in records:
        at = fields.index("exec")
        key, ms = (fields[at + 2], fields[at + 3], fields[at + 4]), float(fields[-1])
        total[key] += ms
        shapes[key].append((ms, fields[-2]))
    return total, {key: [shape for _, shape in sorted(found, reverse=True)[:2]] for key, found in shapes.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    if args.isa:
        env["ONEDNN_MAX_CPU_ISA"] = args.isa
    done = subprocess.run([sys.executable, "-c", STEP.format(scripts=str(SCRIPTS), batch=args.batch)], env=env,
                          capture_output=True, text=True, check=True)
    isa = next((line.split(",")[-1] for line in done.stdout.splitlines() if ",isa:" in line), "?")
    total, slowest = by_kernel(measured_step_lines(done.stdout))
    all_ms = sum(total.values())
    print(f"oneDNN {isa}; one step, batch {args.batch}, 1 thread: {all_ms:.0f} ms in oneDNN primitives\n")
    print("| primitive | implementation | direction | ms | share | slowest shapes |")
    print("|---|---|---|---|---|---|")
    for (kind, impl, direction), ms in sorted(total.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {kind} | {impl} | {direction} | {ms:.0f} | {ms / all_ms:.0%} | "
              f"{', '.join(slowest[(kind, impl, direction)])} |")


if __name__ == "__main__":
    main()
