"""Every relative link and picture in the repository's Markdown files points at a file that exists, and every
`#anchor` at a heading of that file (as GitHub makes anchors)."""
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = sorted(p for p in REPO_ROOT.rglob("*.md")
                  if not {".venv", ".host", "node_modules", ".git"} & set(p.relative_to(REPO_ROOT).parts))
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text):
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchor(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors_of(path):
    return {anchor(line.lstrip("#")) for line in FENCE.sub("", path.read_text()).splitlines() if line.startswith("#")}


def relative_links(path):
    for target in LINK.findall(prose(path.read_text())):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            yield target


def test_markdown_files_are_found():
    names = {p.relative_to(REPO_ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/benchmarks.md", "docs/accuracy.md", "docs/testing.md", "trainer/README.md"} <= names


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_relative_links_resolve(md):
    broken = []
    for target in relative_links(md):
        file_part, _, fragment = target.partition("#")
        path = (md.parent / file_part).resolve() if file_part else md
        name = path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors_of(path):
            broken.append(f"{target}: no heading with anchor #{fragment} in {name}")
    assert broken == [], f"{md.relative_to(REPO_ROOT)}: broken links"


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](page.md#title) [gone](nowhere.md) ![pic](img.png)\n"
                    "`[code](not-a-link.md)`\n```\n[block](not-a-link.md)\n```\n[web](https://example.com)\n")
    assert list(relative_links(page)) == ["page.md#title", "nowhere.md", "img.png"]
    assert "title" in anchors_of(page)
