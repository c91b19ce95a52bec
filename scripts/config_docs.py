"""The config-group table of docs/configs.md, generated from configs/ so that it cannot drift.

A hand-kept list of groups and options went stale whenever a YAML file was added, renamed or
re-described. This script reads the tree instead: every folder under configs/ is a group, every
YAML file in it an option, and the option's description is the first comment line of its file
(Hydra's `# @package` directive aside). The defaults of configs/search.yaml mark each group's default.

    python scripts/config_docs.py           # print the table
    python scripts/config_docs.py --write   # rewrite it in docs/configs.md (also: make docs)

tests/test_docs.py fails when docs/configs.md's table differs from what this prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DOC = ROOT / "docs" / "configs.md"
START = "<!-- config-groups:start -->"
END = "<!-- config-groups:end -->"
NO_COMMENT = "(no comment line in the file)"


def description(path: Path) -> str:
    """The first comment line of a YAML file, without `#`; Hydra's `# @package` line does not count."""
    for line in path.read_text().splitlines():
        text = line.strip().lstrip("#").strip() if line.strip().startswith("#") else ""
        if text and not text.startswith("@package"):
            return text
    return NO_COMMENT


def defaults() -> dict[str, str]:
    """Each group's default in configs/search.yaml (`null`: none chosen)."""
    chosen = {}
    for entry in yaml.safe_load((CONFIGS / "search.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            (group, option), = entry.items()
            chosen[group] = "null" if option is None else str(option)
    return chosen


def default_label(default: str | None) -> str:
    if default is None:
        return "no choice of search.yaml: other files include it"
    if default == "null":
        return "default: none"
    if default.startswith("${") and default.endswith("}"):
        return f"default: follows `{default[2:-1]}`"
    return f"default: `{default}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> str:
    chosen = defaults()
    lines = ["| group | option | what it is: the first comment line of `configs/<group>/<option>.yaml` |",
             "|---|---|---|"]
    for group in sorted(p for p in CONFIGS.iterdir() if p.is_dir()):
        label = f"`{group.name}` ({default_label(chosen.get(group.name))})"
        for index, option in enumerate(sorted(group.glob("*.yaml"))):
            lines.append(f"| {label if index == 0 else ''} | `{option.stem}` | {cell(description(option))} |")
    return "\n".join(lines) + "\n"


def split_doc(text: str) -> tuple[str, str, str]:
    """(before the block, the block, after it); the markers stay in before and after."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise SystemExit(f"error: {DOC.relative_to(ROOT)} needs one {START} line, then one {END} line")
    head, rest = text.split(START)
    block, tail = rest.split(END)
    return head + START + "\n", block.lstrip("\n"), END + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the table in {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    if not args.write:
        sys.stdout.write(table())
        return
    head, _, tail = split_doc(DOC.read_text())
    DOC.write_text(head + table() + tail)
    print(f"wrote the config-group table of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
