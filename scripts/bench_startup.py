"""How fast the command line answers: `--help`, a config error, and the first round of the default preset.

    python scripts/bench_startup.py [--repeats 3] [--first-round]

Each command runs as a fresh process (its imports counted), a few times; the median wall time is
printed and saved in benchmarks/startup.json. Config errors are checked before torch is imported
(federated_nas.config_checks), so they should answer about as fast as `--help`. `--first-round`
also times launch to the first round's start on the default preset (it loads Fashion-MNIST).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH = [sys.executable, str(ROOT / "src" / "search.py")]
COMMANDS = {
    "--help": ["--help"],
    "config error (partition.alpha=-1)": ["partition.alpha=-1", "logger=none"],
    "config error (algorithm.lr=-0.1)": ["algorithm.lr=-0.1", "logger=none"],
    "config error (trainer.accelerator=gpu, no GPU)": ["trainer.accelerator=gpu", "logger=none"],
}
FIRST_ROUND_MARK = "rounds:"  # the round progress bar, drawn as the first round starts


def wall_time(arguments: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(SEARCH + arguments, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return time.perf_counter() - start


def time_to_first_round(work_dir: Path) -> float:
    """Seconds from launch until the log shows the first round starting; the run is then stopped."""
    start = time.perf_counter()
    process = subprocess.Popen(SEARCH + ["logger=none", f"hydra.run.dir={work_dir}/run"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    try:
        while chunk := process.stdout.read(1):  # the bar ends its line with \r, not \n: read by character
            seen = (seen + chunk)[-len(FIRST_ROUND_MARK):]
            if seen == FIRST_ROUND_MARK:
                return time.perf_counter() - start
        raise RuntimeError(f"the run ended without printing {FIRST_ROUND_MARK!r}")
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-round", action="store_true")
    args = parser.parse_args()
    results = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "seconds": {}}
    for label, arguments in COMMANDS.items():
        results["seconds"][label] = statistics.median(wall_time(arguments) for _ in range(args.repeats))
    if args.first_round:
        with tempfile.TemporaryDirectory() as work_dir:
            results["seconds"]["launch to first round (default preset)"] = time_to_first_round(Path(work_dir))
    for label, seconds in results["seconds"].items():
        print(f"{label:50s} {seconds:6.2f} s")
    out = ROOT / "benchmarks" / "startup.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
