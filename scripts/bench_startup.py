"""How fast the command line answers: `--help`, a config error, and the first round of the default preset.

    python scripts/bench_startup.py [--repeats 3] [--first-round [--clusters auto local] [--loggers mlflow none]]

Each command runs as a fresh process (its imports counted), a few times; the median wall time is
printed and saved in benchmarks/startup.json. Config errors are checked before torch is imported
(federated_nas.config_checks), so they should answer about as fast as `--help`. `--first-round`
also times, per cluster and logger option, launch to the log line of the first round's start (the
median of the repeats) and, in the first launch, to the line of its end, on the default preset (it
loads Fashion-MNIST); each run is then stopped. ``logger=mlflow`` is the default: its store (under a
temporary dir) is created by one untimed launch first, as it is for every run but a machine's first.
The lines are log lines, written whether or not a progress bar is drawn (it is not, on a pipe).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
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
ROUND_STARTED = re.compile(r"round 1/\d+ started")  # FederatedRun logs it as round 1 begins
ROUND_ENDED = re.compile(r"round 1/\d+ \{")  # and this once round 1 is evaluated and checkpointed


def wall_time(arguments: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(SEARCH + arguments, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return time.perf_counter() - start


def time_to_first_round(work_dir: Path, cluster: str, logger: str, until_end: bool) -> tuple[float, float | None]:
    """Seconds from launch until the log shows round 1 starting, and ending (``until_end``); the run is then
    stopped."""
    start = time.perf_counter()
    run_dir = tempfile.mkdtemp(dir=work_dir)
    process = subprocess.Popen(SEARCH + [f"logger={logger}", f"cluster={cluster}", f"hydra.run.dir={run_dir}",
                                         f"paths.log_dir={work_dir}/logs"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = None
    try:
        for line in process.stdout:
            if started is None and ROUND_STARTED.search(line):
                started = time.perf_counter() - start
                if not until_end:
                    return started, None
            elif started is not None and ROUND_ENDED.search(line):
                return started, time.perf_counter() - start
        raise RuntimeError(f"the run ended (exit {process.wait()}) before round 1 was logged as "
                           f"{'ended' if started else 'started'}")
    finally:  # an interrupt lets the run stop its worker processes (cluster=auto) before it exits
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-round", action="store_true")
    parser.add_argument("--clusters", nargs="+", default=["auto", "local"], help="cluster options of --first-round")
    parser.add_argument("--loggers", nargs="+", default=["mlflow", "none"], help="logger options of --first-round")
    args = parser.parse_args()
    results = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "seconds": {}}
    for label, arguments in COMMANDS.items():
        results["seconds"][label] = statistics.median(wall_time(arguments) for _ in range(args.repeats))
    if args.first_round:
        with tempfile.TemporaryDirectory() as work_dir:
            if "mlflow" in args.loggers:  # the store, as every run but the first finds it
                time_to_first_round(Path(work_dir), "local", "mlflow", until_end=False)
            for cluster in args.clusters:
                for logger in args.loggers:
                    times = [time_to_first_round(Path(work_dir), cluster, logger, until_end=repeat == 0)
                             for repeat in range(args.repeats)]
                    setting = f"default preset, cluster={cluster}, logger={logger}"
                    results["seconds"][f"launch to round 1 start ({setting})"] = statistics.median(t[0] for t in times)
                    results["seconds"][f"launch to round 1 end ({setting})"] = times[0][1]
    for label, seconds in results["seconds"].items():
        print(f"{label:76s} {seconds:6.2f} s")
    out = ROOT / "benchmarks" / "startup.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
