"""Digests of every method's final state after a tiny run, to show a refactor changed no number.

    python scripts/state_digests.py --out /tmp/before.json        # before the change
    python scripts/state_digests.py --compare /tmp/before.json    # after it: lists what differs, exit 1 if any

Each configs/algorithm/*.yaml runs 2 rounds of 3 clients on the synthetic data in-process (personalization on
where the method defines one); the digest covers every tensor of the last checkpoint (global model, personal
states, the algorithm's server state) and every accuracy and loss of the history, each under its own key, so a
tensor that moved from one place to another shows as moved (the same name in another part, the same digest).
The run's final metrics are included, so a personalization's accuracies are compared too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from federated_nas.cli import one_line_errors  # noqa: E402

TINY = [
    "dataset=synthetic", "federation.num_clients=3", "federation.rounds=2", "federation.client_fraction=1.0",
    "federation.local_batches=2", "federation.batch_size=8", "federation.global_test_samples=null",
    "federation.client_eval_every=1", "partition.min_client_size=5", "plots_every=null", "cluster=local",
    "logger=none", "model=cnn", "model.channels=[4,8]", "model.hidden=16", "search_space.layers=2",
]


def flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}/{key}" if prefix else str(key)))
        return out
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return flatten(dict(enumerate(value)), prefix)
    return {prefix: value}


def digest(value) -> str:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        return f"{tensor.dtype}{tuple(tensor.shape)}:" + hashlib.sha256(tensor.reshape(-1).view(torch.uint8).numpy()
                                                                          if tensor.numel() else b"").hexdigest()[:16]
    return repr(value)


def method_digests(name: str, work: Path, overrides: list[str] = ()) -> dict[str, str]:
    from hydra import compose, initialize_config_dir

    from federated_nas.algorithms.core.base import FederatedAlgorithm
    from federated_nas.federation.checkpoint import load_latest_checkpoint
    from federated_nas.runs import build, run_search

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("search", overrides=[*TINY, f"algorithm={name}", f"paths.root_dir={work}",
                                           f"paths.output_dir={work}/{name}", *overrides])
    cfg.personalize = type(build(cfg.algorithm)).adapt is not FederatedAlgorithm.adapt
    final = run_search(cfg)
    checkpoint = load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints")
    found = {}
    for part in ("model", "personal", "algorithm_state"):
        found.update({f"{part}/{k}": digest(v) for k, v in flatten(checkpoint.get(part, {})).items()})
    found.update({f"final/{k}": repr(v) for k, v in sorted(final.items())  # personalization's too
                  if isinstance(v, float) and ("acc" in k or "loss" in k)})
    for index, row in enumerate(checkpoint["history"]):
        found.update({f"history/{index}/{k}": repr(v) for k, v in sorted(row.items())
                      if isinstance(v, float) and ("acc" in k or "loss" in k)})
    return found


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the digests here")
    parser.add_argument("--compare", type=Path, help="digests written before; list what differs")
    parser.add_argument("--methods", nargs="*", help="only these configs/algorithm names (default all)")
    parser.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides for every run")
    args = parser.parse_args()
    names = args.methods or sorted(p.stem for p in (ROOT / "configs" / "algorithm").glob("*.yaml"))
    with tempfile.TemporaryDirectory() as work:
        digests = {name: method_digests(name, Path(work), args.overrides) for name in names}
    if args.out:
        args.out.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = 0
        for name in names:
            old, new = before.get(name, {}), digests[name]
            changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
            gone, added = sorted(old.keys() - new.keys()), sorted(new.keys() - old.keys())
            moved = [(g, a) for g in gone for a in added  # the same name in another part, the same digest
                     if g.split("/", 1)[1] == a.split("/", 1)[1] and old[g] == new[a]]
            gone = [g for g in gone if g not in {m for m, _ in moved}]
            added = [a for a in added if a not in {m for _, m in moved}]
            status = "equal" if not (changed or gone or added) else "DIFFERS"
            differ += status != "equal"
            print(f"{name:14s} {status}  {len(new)} keys")
            for key in changed:
                print(f"    changed {key}: {old[key]} -> {new[key]}")
            for g, a in moved:
                print(f"    moved   {g} -> {a} (same digest)")
            for key in gone:
                print(f"    gone    {key}")
            for key in added:
                print(f"    new     {key}")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
