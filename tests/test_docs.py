"""The documentation stands on its own: every relative link in a Markdown file resolves inside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEMES = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    """Every Markdown file git knows about (tracked or new), so build output and virtualenvs are left out."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    return sorted(ROOT / name for name in listed if (ROOT / name).is_file())


def relative_links(text: str) -> list[str]:
    """The link targets in `text` that point at files, without their #fragment."""
    targets = []
    for raw in LINK.findall(text):
        if raw.startswith(SCHEMES) or raw.startswith("#"):
            continue
        targets.append(raw.split("#", 1)[0])
    return targets


def test_link_pattern_finds_links_and_images() -> None:
    text = 'see [a](docs/a.md#top), ![b](img/b.png "B"), [c](https://x.org), [d](#here) and [e](<e.md>)'
    assert relative_links(text) == ["docs/a.md", "img/b.png", "e.md"]


def test_there_are_markdown_files_to_check() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in markdown_files()}
    assert {"README.md", "docs/design.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repository(path: Path) -> None:
    broken = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        resolved = (path.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links that do not resolve inside the repository: {broken}"
