"""The kit stands alone: what the notebooks, the README and ``avlib`` cite from the official code, the
paper's supplement, the metric definitions and the peers lives in ``docs/``, and every pointer into
``docs/`` lands on an existing page and heading.

``tests/`` and ``conftest.py`` may read ``../shared`` (that is how CI hands them the recordings and the
golden fixtures), and the data-root lookup may mention ``../shared/data``; nothing a student reads may send
them to ``../shared/reference`` or to a file that only exists there.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from avlib.paths import ROOT

DOCS = ROOT / "docs"

# What a student reads: the README files, the docs, the notebooks (both twins), the library, the Makefile.
READ_BY_STUDENTS = sorted(
    [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "Makefile", *ROOT.glob("data/*.md"),
     *DOCS.rglob("*.md"), *ROOT.glob("notebooks/*.py"), *ROOT.glob("notebooks/*.ipynb"),
     *ROOT.glob("notebooks/*.yaml"), *(ROOT / "avlib").rglob("*.py")])

# Any path into ../shared except the data root (``../shared/data``, where CI keeps the recordings), and the
# names of the reference notes that only exist there.
OUTSIDE = re.compile(r"shared/(?!data\b)|\b(?:DEEPAVFUSION|PEERS_AND_METRICS|SEED_SUPPLEMENT|SMALL_SCALE|"
                     r"BASELINES|FIXTURES)\.md\b|\bPEERS B\d")


def _text(path: Path) -> str:
    """The file's text; for a notebook, the sources of its cells (what JupyterLab shows)."""
    if path.suffix == ".ipynb":
        return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    return path.read_text()


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ----------------------------------------------------------------------------------------------
# Headings and anchors
# ----------------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """The anchor GitHub derives from a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    """Every heading anchor of a markdown file (outside code fences; repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out, fenced = set(), False
    for line in md.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def section_numbers(md: Path) -> set[str]:
    """The section numbers of a page's headings: "1.3" for "### 1.3 Fusion tokens", "A.2" for "## A.2 ..."."""
    heads = re.findall(r"^#{1,6}\s+([A-Z]?\.?\d+(?:\.\d+)?)\.?\s", md.read_text(), flags=re.M)
    return {h.rstrip(".") for h in heads}


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------
def test_no_pointers_out_of_the_kit():
    bad = [f"{_rel(p)}:{n}: {line.strip()}"
           for p in READ_BY_STUDENTS for n, line in enumerate(_text(p).splitlines(), 1) if OUTSIDE.search(line)]
    assert not bad, ("these lines point at ../shared or its reference notes; cite docs/ instead "
                     "(docs/README.md lists the pages):\n" + "\n".join(bad))


_DOC_MENTION = re.compile(r"(?<![\w/.-])(?:\.\./)?docs/([\w-]+\.md)(?:#([\w-]+))?")
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _link_problems(path: Path) -> list[str]:
    """Broken pointers into docs/ from one file: plain mentions (``docs/metrics.md#ciou``, resolved from
    the repository root, as in docstrings) and markdown links (resolved from the file's folder, as
    JupyterLab and GitHub do)."""
    text, problems = _text(path), []

    def check(target: Path, anchor: str | None, shown: str) -> None:
        if not target.is_file():
            problems.append(f"{_rel(path)}: {shown}: no such file")
        elif anchor and anchor not in anchors(target):
            problems.append(f"{_rel(path)}: {shown}: no heading with anchor #{anchor} in {_rel(target)}")

    for m in _DOC_MENTION.finditer(text):
        check(DOCS / m.group(1), m.group(2), m.group(0))
    if path.suffix in (".md", ".ipynb") or path.parent.name == "notebooks":
        for m in _MD_LINK.finditer(text):
            target, _, anchor = m.group(1).partition("#")
            if re.match(r"[a-z]+:", target) or not (target.endswith(".md") or (not target and path.parent == DOCS)):
                continue                          # web links, links to other file types, in-notebook anchors
            check((path.parent / target).resolve() if target else path, anchor or None, m.group(1))
    return list(dict.fromkeys(problems))          # a link that is also a plain mention: report it once


def test_links_into_docs_resolve():
    problems = [p for f in READ_BY_STUDENTS for p in _link_problems(f)]
    assert not problems, "broken links into docs/:\n" + "\n".join(problems)


def test_doc_links_are_checked():
    """The link check sees the notebooks' links (a check that found nothing to check could not fail)."""
    linked = [p for p in ROOT.glob("notebooks/*.py") if _DOC_MENTION.search(p.read_text())]
    assert len(linked) >= 8, f"only {len(linked)} notebooks link into docs/"
    assert "ciou" in anchors(DOCS / "metrics.md")
    assert slug("### 1.3 Fusion tokens and fusion blocks".lstrip("# ")) == "13-fusion-tokens-and-fusion-blocks"


# `[code §3.5]`, `(§4.8)`, `[code §1.3-1.4]` in avlib: sections of docs/official_implementation.md;
# `[supp A.2]`: sections of docs/protocols.md (see the legends in avlib/config.py and avlib/heads.py).
_SECTION = re.compile(r"§(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?")
_SUPP = re.compile(r"\[supp (A\.\d)\]|\(A\.(\d)(?:, [^)]*)?\)")


@pytest.mark.parametrize("page, pattern", [("official_implementation.md", _SECTION), ("protocols.md", _SUPP)])
def test_section_tags_in_avlib_exist(page, pattern):
    known = section_numbers(DOCS / page)
    missing = []
    for p in sorted((ROOT / "avlib").rglob("*.py")):
        for n, line in enumerate(p.read_text().splitlines(), 1):
            for m in pattern.finditer(line):
                for sec in filter(None, m.groups()):
                    sec = sec if page != "protocols.md" or sec.startswith("A.") else f"A.{sec}"
                    if sec not in known:
                        missing.append(f"{_rel(p)}:{n}: {m.group(0)}")
    assert known, f"no numbered headings found in docs/{page}"
    assert not missing, f"section tags without a section in docs/{page}:\n" + "\n".join(missing)
