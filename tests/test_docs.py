"""The docs stay true to the tree: the generated config table, the README's length, and every relative link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ROOT, load_script

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of a markdown file's lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image whose target has no scheme (http:, mailto:)."""
    return [(number, target) for number, line in prose_lines(path)
            for target in LINK.findall(CODE_SPAN.sub("", line))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_config_group_table_is_generated_from_configs():
    module = load_script("config_docs")
    _, block, _ = module.split_doc(module.DOC.read_text())
    assert block == module.table(), (
        "docs/configs.md's config-group table differs from configs/: run `python scripts/config_docs.py --write` "
        "(or `make docs`)")


def test_config_group_table_covers_every_option():
    table = load_script("config_docs").table()
    for path in (ROOT / "configs").glob("*/*.yaml"):
        assert f"`{path.stem}`" in table, path


def test_readme_is_a_landing_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, at most {MAX_README_LINES}: move detail to a page under docs/")


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_point_to_files(page: Path):
    broken = []
    for number, target in relative_links(page):
        file_part = target.split("#", 1)[0]
        if file_part and not (page.parent / file_part).exists():
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target}")
    assert broken == [], "links to files that do not exist:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda path: str(path.relative_to(ROOT)))
def test_anchors_of_markdown_links_exist(page: Path):
    broken = []
    for number, target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part) if file_part else page
        if anchor and linked.suffix == ".md" and linked.exists() and anchor not in anchors(linked):
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target}")
    assert broken == [], "links to headings that do not exist:\n" + "\n".join(broken)
