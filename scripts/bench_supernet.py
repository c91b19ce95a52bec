"""Local search-step throughput and peak memory: the batched supernet against the op-by-op DARTS reference.

Each method's real local step (FedNAS' MiLeNAS step on a train and a val batch, FedMetaNAS'
first-order MAML step on a support and a query task, FedDSNAS' step on one sampled child) runs
through a Lightning Trainer on the batched supernet and on the op-by-op reference built from it
(same weights, same relaxation); FedDSNAS' step also runs on its discrete child network (the
supernet pruned to one op per edge), the cost its step should stay close to.
Steps are timed one by one with a callback, so Trainer start-up is not counted; the two paths
alternate in one process, so the ratio holds on a shared, noisy machine even when absolute
numbers drift. Peak memory is measured in a fresh process per path: the growth of the peak
resident set (VmHWM) over one local step. Writes benchmarks/results.json and the table in benchmarks/README.md.

The plain step (``--plain-threads``) is the other view: forward, backward and SGD on the weights with
the softmax relaxation, no Lightning, no method, at each given torch thread count, the two paths
alternating on the same weights and batch. It is what an outside check of "supernet against DARTS"
times; a method's step adds what the method does around it (MiLeNAS: a second forward and backward
on the val batch for the alpha gradient). ``--profile`` writes torch.profiler's per-op tables of one
step of each view and path to benchmarks/profile.txt.

``--device cuda`` and ``--precision bf16-mixed`` run the same steps on a GPU or under bf16 autocast; their rows
go to ``--results`` (a JSON file), as do any with it given, so benchmarks/ keeps the CPU float32 tables. Each
local-step row also has the two paths' losses on the same first step (same weights, batch and noise), and
their relative gap: the op-by-op reference's check of the fast path in that precision on that device.

    python scripts/bench_supernet.py [--repeats 3] [--settings small paper] [--methods fednas fedmetanas feddsnas]
                                     [--plain-threads 1 2] [--profile] [--device cpu|cuda]
                                     [--precision 32-true|bf16-mixed] [--results PATH] [--no-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch.utils.data import TensorDataset

from federated_nas.algorithms.core.base import ClientTask, RoundPlan
from federated_nas.compat import quiet_libraries
from federated_nas.data.federated_data import ClientData
from federated_nas.runs import build
from federated_nas.search_space.reference import ReferenceSearchNetwork
from federated_nas.search_space.supernet import SearchNetwork

class Setting(NamedTuple):
    C: int
    layers: int
    size: int  # image side
    channels: int
    batch: int
    stem_stride: int = 1


SETTINGS = {
    "small": Setting(8, 5, 28, 3, 64),
    "paper": Setting(16, 8, 32, 3, 64),
    "tiny": Setting(2, 3, 8, 3, 8),  # seconds on a CPU: a dry run of the GPU check (scripts/gpu_check.sh --cpu-dry-run)
    "preset": Setting(4, 3, 28, 1, 32, stem_stride=2),  # the CPU preset's: the step a client of src/search.py runs
}
DEFAULT_SETTINGS = ["small", "paper"]
PRECISIONS = ("32-true", "bf16-mixed")
METHODS = ("fednas", "fedmetanas", "feddsnas")
SINGLE_PATH = {"feddsnas"}  # methods whose step computes one sampled child: also timed against that child alone
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"


@dataclass(frozen=True)
class Target:
    """Where and in what precision the steps run (Lightning's ``precision`` names)."""

    device: str = "cpu"
    precision: str = "32-true"

    def trainer_options(self) -> dict:
        return {"accelerator": "gpu" if self.device == "cuda" else "cpu", "devices": 1, "precision": self.precision}

    def autocast(self) -> contextlib.AbstractContextManager:
        """The plain step's autocast: Lightning's ``bf16-mixed`` outside Lightning."""
        if self.precision == "bf16-mixed":
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for the device's queued kernels, so a clock read after it has timed them."""
        if self.device == "cuda":
            torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Seconds of each training step, without the Trainer's start-up and tear-down."""

    def __init__(self, target: Target):
        self.target = target
        self.seconds: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.target.synchronize()
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.target.synchronize()
        self.seconds.append(time.perf_counter() - self._started)


def setup(setting: str, method: str):
    """(algorithm, fast supernet, a client whose splits are one batch each) for a setting."""
    shape = SETTINGS[setting]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("search", overrides=[f"algorithm={method}", "logger=none"])
    algorithm = build(cfg.algorithm)
    torch.manual_seed(0)
    fast = SearchNetwork(shape.channels, 10, C=shape.C, layers=shape.layers, stem_stride=shape.stem_stride,
                         **algorithm.supernet_options())

    def split() -> TensorDataset:
        return TensorDataset(torch.randn(shape.batch, shape.channels, shape.size, shape.size),
                             torch.randint(0, 10, (shape.batch,)))

    return algorithm, fast, ClientData(0, split(), split(), split()), shape.batch


def local_steps(algorithm, model, client, batch: int, steps: int, target: Target = Target()) -> list[float]:
    return local_fit(algorithm, model, client, batch, steps, target)[0]


def local_fit(algorithm, model, client, batch: int, steps: int, target: Target) -> tuple[list[float], float]:
    """(seconds of each of ``steps`` local steps, their mean train loss) on ``target``."""
    timer = StepTimer(target)
    trainer = L.Trainer(**target.trainer_options(), max_epochs=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer])
    task = ClientTask(client, RoundPlan(0, 10, seed=0, local_epochs=steps, local_batches=None, batch_size=batch), 0)
    trainer.fit(algorithm.local_module(model, task), train_dataloaders=algorithm.client_loader(task))
    return timer.seconds, float(trainer.callback_metrics["train_loss"])


def models_for(setting: str, method: str):
    algorithm, fast, client, batch = setup(setting, method)
    models = {"fast": fast, "reference": ReferenceSearchNetwork(fast)}
    if method in SINGLE_PATH:  # the discrete child network: the supernet pruned to one op per edge
        models["child"] = fast.most_likely_child()
    return algorithm, models, client, batch


def measure(setting: str, method: str, repeats: int, target: Target = Target(), memory: bool = True) -> dict:
    algorithm, models, client, batch = models_for(setting, method)
    times, losses = {name: [] for name in models}, {}
    for name, model in models.items():  # warm-up: first steps allocate and pick kernels
        torch.manual_seed(0)  # the same noise (Gumbel, sampled children) for every path's first step
        losses[name] = local_fit(algorithm, model, client, batch, 1, target)[1]
    for _ in range(repeats):
        for name, model in models.items():  # alternate, so drift on a shared machine hits both alike
            times[name] += local_steps(algorithm, model, client, batch, 1, target)
    best = {name: min(seconds) for name, seconds in times.items()}
    C, layers, size = SETTINGS[setting][:3]
    peak = {name: peak_memory_mib(setting, method, name, target) if memory else None for name in models}
    child = {}
    if "child" in best:
        child = {"child_seconds_per_step": best["child"], "child_samples_per_second": batch / best["child"],
                 "child_peak_mib": peak["child"], "step_over_child": best["fast"] / best["child"]}
    return {**child,
        "setting": setting, "method": method, "C": C, "layers": layers, "image_size": size, "batch": batch,
        "fast_seconds_per_step": best["fast"], "reference_seconds_per_step": best["reference"],
        "fast_samples_per_second": batch / best["fast"], "reference_samples_per_second": batch / best["reference"],
        "speedup": best["reference"] / best["fast"], "repeats": repeats,
        "fast_peak_mib": peak["fast"], "reference_peak_mib": peak["reference"],
        "device": target.device, "precision": target.precision,
        "fast_loss": losses["fast"], "reference_loss": losses["reference"],
        "loss_gap": abs(losses["fast"] - losses["reference"]) / abs(losses["reference"]),
    }


def plain_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, target: Target = Target()) -> float:
    """Seconds of one weight step: forward, backward (the alphas get their gradient too, as in DARTS), SGD."""
    target.synchronize()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with target.autocast():
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    target.synchronize()
    return time.perf_counter() - start


def plain_models(setting: str, device: str = "cpu") -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """(paths, their SGD optimizers, batch, labels): the softmax supernet and its op-by-op twin, same weights."""
    C, layers, size, channels, batch, stem_stride = SETTINGS[setting]
    torch.manual_seed(0)
    fast = SearchNetwork(channels, 10, C=C, layers=layers, stem_stride=stem_stride)  # softmax relaxation
    models = {"fast": fast.to(device), "reference": ReferenceSearchNetwork(fast).to(device)}
    optimizers = {name: torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
                  for name, model in models.items()}
    return (models, optimizers, torch.randn(batch, channels, size, size).to(device),
            torch.randint(0, 10, (batch,)).to(device))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_plain(setting: str, threads: int, repeats: int, target: Target = Target()) -> dict:
    """Best plain-step time of each path at ``threads`` torch threads, the paths alternating."""
    with torch_threads(threads):
        models, optimizers, x, y = plain_models(setting, target.device)
        times = {name: [] for name in models}
        for name in models:  # warm-up
            plain_step(models[name], optimizers[name], x, y, target)
        for _ in range(repeats):
            for name in models:
                times[name].append(plain_step(models[name], optimizers[name], x, y, target))
    best = {name: min(seconds) for name, seconds in times.items()}
    C, layers, size, _, batch, _ = SETTINGS[setting]
    return {"setting": setting, "threads": threads, "onednn_isa": onednn_isa(), "C": C, "layers": layers,
            "image_size": size, "batch": batch, "device": target.device, "precision": target.precision,
            "repeats": repeats, "fast_seconds_per_step": best["fast"],
            "reference_seconds_per_step": best["reference"], "speedup": best["reference"] / best["fast"]}


def onednn_isa() -> str:
    """The instruction set oneDNN may use: ``ONEDNN_MAX_CPU_ISA`` where set (AVX2 stands in for an AVX2-only
    CPU), else the machine's best (torch's CPU capability)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or f"all ({torch.backends.cpu.get_cpu_capability()})"


def op_table(run: Callable[[], object], rows: int = 15) -> str:
    """torch.profiler's per-op table of one call of ``run``, by self CPU time."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def write_profiles(setting: str, threads: int) -> Path:
    """benchmarks/profile.txt: per-op tables of the plain step and of FedNAS' MiLeNAS step, each path, one step."""
    sections = []
    with torch_threads(threads):
        models, optimizers, x, y = plain_models(setting)
        for name in models:
            plain_step(models[name], optimizers[name], x, y)  # warm-up outside the profile
            sections.append((f"plain step, {name}", op_table(lambda: plain_step(models[name], optimizers[name], x, y))))
        algorithm, local, client, batch = models_for(setting, "fednas")
        for name in ("fast", "reference"):
            local_steps(algorithm, local[name], client, batch, 1)
            sections.append((f"FedNAS MiLeNAS step (Lightning), {name}",
                             op_table(lambda: local_steps(algorithm, local[name], client, batch, 1))))
    C, layers, size, channels, batch, _ = SETTINGS[setting]
    out = OUT / "profile.txt"
    out.write_text(f"torch.profiler, CPU, self time by op; setting {setting} (C={C}, {layers} layers, "
                   f"{size}x{size}x{channels}, batch {batch}), {threads} thread(s), one step after a warm-up\n\n"
                   + "\n".join(f"== {title}\n{table}" for title, table in sections))
    return out


def peak_memory_mib(setting: str, method: str, path: str, target: Target = Target()) -> float:
    """Growth of the peak resident memory (on CUDA: of the peak allocated GPU memory) over one local step,
    in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--memory-of", setting, method, path, "--device", target.device,
                          "--precision", target.precision], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(setting: str, method: str, path: str, target: Target) -> None:
    """Peak RSS during model set-up and one local step, above the RSS after imports (Linux); on CUDA, the peak
    GPU memory allocated during the step (the model moved in), above what was allocated before it."""
    quiet_libraries()
    if target.device == "cuda":
        torch.cuda.init()
    algorithm, models, client, batch = models_for(setting, method)
    for other in [name for name in models if name != path]:
        models.pop(other)  # only the measured path's model stays alive
    if target.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        local_steps(algorithm, models[path], client, batch, 1, target)
        print((torch.cuda.max_memory_allocated() - before) / 2**20)
        return
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = memory_kib("VmRSS")
    local_steps(algorithm, models[path], client, batch, 1, target)
    print((memory_kib("VmHWM") - before) / 1024)


def cpu_model() -> str:
    """The CPU's model name and its vector instruction sets, from /proc/cpuinfo (the machine type elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    isa = [flag for flag in fields.get("flags", "").split() if flag in ("avx2", "fma", "avx512f", "avx512_bf16",
                                                                          "avx512_vnni", "amx_tile", "amx_bf16")]
    return f"{fields.get('model name', platform.machine())} ({' '.join(isa) or 'no AVX2'})"


def child_cells(row: dict) -> str:
    if "child_samples_per_second" not in row:
        return "- | -"
    return f"{row['child_samples_per_second']:.1f} | {row['step_over_child']:.2f}"


def kept_rows(stored: dict, name: str, fresh: list[dict], keys: tuple[str, ...], command: str) -> list[dict]:
    """This run's rows (stamped with its command), then the stored rows of settings it did not measure."""
    measured = {tuple(row[key] for key in keys) for row in fresh}
    earlier = [{"command": stored.get("command", ""), **row} for row in stored.get(name, [])
               if tuple(row.get(key) for key in keys) not in measured]
    return [{**row, "command": command} for row in fresh] + earlier


def plain_lines(plain: list[dict]) -> list[str]:
    if not plain:
        return []
    lines = ["", "Plain supernet step (`--plain-threads`): forward, backward and SGD on the weights, softmax relaxation, "
             "no Lightning, best of the repeats, the two paths alternating in one process on the same weights and "
             "batch, at the given torch thread count.", "",
             "| setting | C | layers | input | batch | threads | oneDNN ISA | reference (s/step) | fast (s/step) "
             "| speedup | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in plain:
        lines.append(f"| {r['setting']} | {r['C']} | {r['layers']} | {r['image_size']}x{r['image_size']}x3 | "
                     f"{r['batch']} | {r['threads']} | {r.get('onednn_isa', 'all')} | {r['reference_seconds_per_step']:.2f} | "
                     f"{r['fast_seconds_per_step']:.2f} | {r['speedup']:.2f}x | `{r.get('command', '')}` |")
    return lines


def write_report(results: list[dict], plain: list[dict], machine: str, command: str) -> None:
    results_path = OUT / "results.json"
    stored = json.loads(results_path.read_text()) if results_path.exists() else {}
    results = kept_rows(stored, "results", results, ("setting", "method"), command)
    plain = kept_rows(stored, "plain", plain, ("setting", "threads", "onednn_isa"), command)
    stored.update(machine=machine, command=command, results=results, plain=plain)
    OUT.mkdir(exist_ok=True)
    results_path.write_text(json.dumps(stored, indent=2))
    lines = ["# Benchmarks", "", f"Machine: {machine}. Command: `{command}` (also `make bench`).", "",
             "One local search step of each method through its Lightning module (FedNAS: MiLeNAS step on a train "
             "and a val batch; FedMetaNAS: first-order MAML step on a support and a query task, Gumbel-softmax, "
             "input combinations; FedDSNAS: one hard-Gumbel child sampled per step, only its ops computed), best of "
             "the repeats, the paths alternating in one process on the same weights and batch. For FedDSNAS the "
             "child column is the discrete child network (the supernet pruned to one op per edge) running the same "
             "step. Peak memory: growth of the peak resident set over one local step (model built, other paths freed), "
             "fresh process per path.", "",
             "| setting | method | C | layers | input | batch | reference (samples/s) | fast (samples/s) | speedup "
             "| reference peak (MiB) | fast peak (MiB) | child (samples/s) | fast / child step time | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['setting']} | {r['method']} | {r['C']} | {r['layers']} | "
                     f"{r['image_size']}x{r['image_size']}x3 | {r['batch']} | {r['reference_samples_per_second']:.1f} "
                     f"| {r['fast_samples_per_second']:.1f} | {r['speedup']:.2f}x | {r['reference_peak_mib']:.0f} "
                     f"| {r['fast_peak_mib']:.0f} | {child_cells(r)} | `{r.get('command', '')}` |")
    lines += plain_lines(plain)
    readme = OUT / "README.md"
    rest = readme.read_text().split("\n## ", 1) if readme.exists() else []
    tail = "\n## " + rest[1] if len(rest) == 2 else ""
    readme.write_text("\n".join(lines) + "\n" + tail)
    print("\n".join(lines))


def write_results(path: Path, results: list[dict], plain: list[dict], machine: str, command: str) -> None:
    """This run's rows alone, as JSON at ``path``, and one line per local-step row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "command": command, "results": results, "plain": plain},
                               indent=2))
    for r in results:
        print(f"{r['setting']} {r['method']} {r['device']} {r['precision']}: fast {r['fast_samples_per_second']:.1f} "
              f"samples/s, reference {r['reference_samples_per_second']:.1f}, speedup {r['speedup']:.2f}x, "
              f"loss gap {r['loss_gap']:.2e}")
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--plain-threads", nargs="*", type=int, default=[1, 2],
                        help="torch thread counts of the plain-step view (none: skip it)")
    parser.add_argument("--profile", action="store_true", help="also write benchmarks/profile.txt (first setting)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true",
                        help="Lightning's precision of the local steps (bf16-mixed: bf16 autocast, float32 weights)")
    parser.add_argument("--results", type=Path, help="write this run's rows here as JSON, not to benchmarks/ "
                                                     "(needed with --device cuda or --precision bf16-mixed)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-of", nargs=3, metavar=("SETTING", "METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    target = Target(args.device, args.precision)
    if args.memory_of:
        memory_child(*args.memory_of, target)
        return
    if (target != Target() or args.no_memory) and args.results is None:
        parser.error("--device cuda, --precision bf16-mixed and --no-memory write their rows to --results PATH "
                     "(benchmarks/ holds the CPU float32 tables with memory)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch")
    quiet_libraries()
    machine = (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
               f"(kernels for {torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads")
    if args.device == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    results = [measure(s, m, args.repeats, target, not args.no_memory) for s in args.settings for m in args.methods]
    plain = [measure_plain(s, threads, args.repeats, target) for s in args.settings for threads in args.plain_threads]
    command = "python " + " ".join(sys.argv)
    if args.results is not None:
        write_results(args.results, results, plain, machine, command)
        return
    write_report(results, plain, machine, command)
    if args.profile:
        print(f"saved {write_profiles(args.settings[0], args.plain_threads[0] if args.plain_threads else 1)}")


if __name__ == "__main__":
    main()
