"""The user guide holds together: links resolve, the README stays a landing page, every page is reachable.

Checks README.md and docs/*.md: every relative link and image points to an existing file
(anchors and web links are not followed), the README's "Quick start" code block holds exactly
``make demo`` and ``make test``, the README is under 1,000 words, and every docs page can be
reached from docs/index.md by following links.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_WORDS = 1000

# [text](target) and ![alt](target), with an optional "title"; reference definitions "[id]: target"
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The Markdown without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def link_targets(text: str) -> list[str]:
    """Every link and image target of a Markdown text, in order."""
    prose = _prose(text)
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE_DEF, HTML_SRC) for m in pattern.finditer(prose)]


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def local_path(page: Path, target: str) -> Path | None:
    """The file a relative link of ``page`` points to (None for web links and same-page anchors)."""
    if is_external(target):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None
    return (ROOT / path.lstrip("/")) if path.startswith("/") else (page.parent / path)


def broken_links(page: Path) -> list[str]:
    return [target for target in link_targets(page.read_text(encoding="utf-8"))
            if (path := local_path(page, target)) is not None and not path.exists()]


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section (up to the next heading of level 1 or 2)."""
    match = re.search(rf"^##\s+{re.escape(title)}\s*$(.*?)(?=^#{{1,2}}\s|\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def commands_of(block: str) -> list[str]:
    """The commands of a shell code block, without comments and blank lines."""
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


# -- the checker itself ---------------------------------------------------------------------------


def test_link_finder_sees_links_images_and_references_but_not_code(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text(
        "See [there](there.md#part), ![img](images/missing.png \"a title\"), [web](https://example.org),\n"
        "[same page](#anchor), <img src=\"pic.png\">, `[not](code.md)`.\n\n"
        "```\n[not a link](fenced.md)\n```\n\n[ref]: gone.md\n", encoding="utf-8")
    assert link_targets(page.read_text()) == ["there.md#part", "images/missing.png", "https://example.org",
                                              "#anchor", "gone.md", "pic.png"]
    assert broken_links(page) == ["images/missing.png", "gone.md", "pic.png"]


# -- the README and the guide ---------------------------------------------------------------------


@pytest.mark.parametrize("page", [README, *doc_pages()], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_images_exist(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to missing files"


def test_readme_quick_start_is_exactly_make_demo_and_make_test():
    body = section(README.read_text(encoding="utf-8"), "Quick start")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", body, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"the Quick start section should hold one code block, not {len(blocks)}"
    assert commands_of(blocks[0]) == ["make demo", "make test"]


def test_readme_is_a_short_landing_page():
    words = len(README.read_text(encoding="utf-8").split())
    assert words < README_MAX_WORDS, f"README.md has {words} words; move detail into docs/"


def test_every_docs_page_is_reachable_from_the_index():
    index = DOCS / "index.md"
    assert index.is_file(), "docs/index.md is missing"
    seen, todo = {index.resolve()}, [index]
    while todo:
        page = todo.pop()
        for target in link_targets(page.read_text(encoding="utf-8")):
            path = local_path(page, target)
            if path is not None and path.suffix == ".md" and path.is_file() and path.resolve() not in seen:
                seen.add(path.resolve())
                todo.append(path)
    unreachable = [p.name for p in doc_pages() if p.resolve() not in seen]
    assert unreachable == [], f"not reachable from docs/index.md: {unreachable}"
