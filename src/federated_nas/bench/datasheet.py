"""The datasheet committed beside a table: how it was built, and how far its numbers can be trusted."""

from __future__ import annotations

import itertools

import numpy as np


def datasheet(table: dict, records: dict) -> str:
    from federated_nas.bench.build import kendall, ranking_stats, spearman

    spec, space, archs = table["spec"], table["space"], table["architectures"]
    splits, seeds = table["splits"], table["seeds"]
    budget, network = spec["budget"], spec["network"]
    seconds = [r["train_seconds"] + r["eval_seconds"] for r in records.values()]
    lines = [
        f"# Datasheet: {table['name']}",
        "",
        f"Format `{table['format']}`. Query it with `federated_nas.bench.Bench.load(<this table>.json.gz)` "
        "(docs/bench.md).",
        "",
        "## How it was built",
        "",
        f"- Space: DARTS cells of {space['steps']} intermediate nodes, two distinct inputs each, ops "
        f"{', '.join(space['primitives'])}; the same cell in every layer (`search_space=bench`). "
        f"{space['raw']} cells as a genotype writes them, {space['unique']} after removing isomorphic ones.",
        f"- Covered: {len(archs)} of {space['unique']} architectures, each on {len(splits)} splits x {len(seeds)} seeds "
        f"({len(records)} trainings recorded).",
        f"- Network: `GenotypeNetwork` C={network['C']}, layers={network['layers']}, "
        f"stem_multiplier={network['stem_multiplier']}, stem_stride={network['stem_stride']}.",
        f"- Data: {spec['dataset']}, {spec['num_clients']} clients, partition seed {spec['partition_seed']}, splits "
        f"{', '.join(splits)}; each client's share cut 0.45/0.45/0.1 (train/val/test) as in search.yaml.",
        f"- FedAvg: {budget['rounds']} rounds, {budget['clients_per_round']} clients per round, {budget['local_steps']} "
        f"local steps of batch {budget['batch_size']}, SGD lr {budget['lr']} cosine to {budget['lr_min']}, momentum "
        f"{budget['momentum']}, weight decay {budget['weight_decay']}, clip {budget['grad_clip']}; global accuracy on "
        f"{budget['test_samples'] or 'all'} test images.",
        f"- Cost: {np.mean(seconds):.1f} s per training on average ({np.sum(seconds) / 3600:.2f} core-hours in all).",
        "",
        "## Ranking quality per split (global test accuracy)",
        "",
        "The table's value is the mean over its seeds; the last column is how far a ranking by that mean can be "
        "trusted: k r / (1 + (k - 1) r) with r the mean Spearman over seed pairs (Spearman-Brown).",
        "",
        "| split | architectures | Spearman seed 0 vs 1 | Spearman, seed pairs (mean) | mean abs seed diff | "
        "mean seed std | median | top 5% mean | best | reliability of the mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in splits:
        accs = {key: entry[split]["global_acc"] for key, entry in archs.items()}
        s = ranking_stats(accs)
        nan = float("nan")
        lines.append(f"| {split} | {s['architectures']} | {s.get('spearman_seeds', nan):.3f} | "
                     f"{s.get('spearman_seed_pairs_mean', nan):.3f} | {s.get('abs_seed_diff_mean', nan):.4f} | "
                     f"{s['seed_std_mean']:.4f} | {s['median']:.4f} | {s['top5pct_mean']:.4f} | {s['best']:.4f} | "
                     f"{s.get('mean_reliability', nan):.3f} |")
    lines += ["", "## Rank correlation between splits (mean over seeds)", "",
              "| splits | Spearman | Kendall tau |", "|---|---|---|"]
    for a, b in itertools.combinations(splits, 2):
        keys = sorted(archs)
        mean_a = [np.mean(archs[k][a]["global_acc"]) for k in keys]
        mean_b = [np.mean(archs[k][b]["global_acc"]) for k in keys]
        lines.append(f"| {a} vs {b} | {spearman(mean_a, mean_b):.3f} | {kendall(mean_a, mean_b):.3f} |")
    lines += ["", "## Best architectures per split", ""]
    for split in splits:
        ranked = sorted(archs, key=lambda k: -np.mean(archs[k][split]["global_acc"]))[:5]
        lines.append(f"- {split}: " + "; ".join(f"`{k}` {np.mean(archs[k][split]['global_acc']):.4f}" for k in ranked))
    lines += ["", "## Does the best architecture move with the split?", "", *split_transfer(archs, splits)]
    lines += ["", "## Per-architecture seed spread (global accuracy, max - min over seeds)", "",
              "| split | median | 90th percentile | max |", "|---|---|---|---|"]
    for split in splits:
        spread = np.array([np.ptp(entry[split]["global_acc"]) for entry in archs.values()])
        lines.append(f"| {split} | {np.median(spread):.4f} | {np.percentile(spread, 90):.4f} | {spread.max():.4f} |")
    return "\n".join(lines) + "\n"


def split_transfer(archs: dict, splits: list[str]) -> list[str]:
    """Where each split's best architecture (by mean) stands on the other splits, and how many of one split's
    top 5% are in another's: whether heterogeneity changes which architecture to pick, not only the scores."""
    from federated_nas.bench.build import top_count
    from federated_nas.bench.table import percentile_in

    means = {split: {key: float(np.mean(entry[split]["global_acc"])) for key, entry in archs.items()} for split in splits}
    count = top_count(len(archs))
    top = {split: set(sorted(m, key=lambda k: (-m[k], k))[:count]) for split, m in means.items()}
    lines = [f"Percentile: % of the table's architectures whose mean is at most this one's (the best: 100). "
             f"Top 5%: the {count} best means.", ""]
    for a, b in itertools.permutations(splits, 2):
        best = min(means[a], key=lambda k: (-means[a][k], k))
        ranked = np.sort(np.fromiter(means[b].values(), float))
        lines.append(f"- {a}'s best, `{best}`, stands at percentile {percentile_in(ranked, means[b][best]):.1f} on "
                     f"{b} (regret {ranked[-1] - means[b][best]:.4f}).")
    for a, b in itertools.combinations(splits, 2):
        lines.append(f"- {a} and {b} share {len(top[a] & top[b])} of their top {count}.")
    return lines
