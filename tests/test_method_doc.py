"""docs/METHOD.md is the project's method: every citation of it in the repository names a section that exists,
and nothing cites a METHOD.md outside the project."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
METHOD = PROJECT / "docs" / "METHOD.md"
#: An anchor after ``METHOD.md#``, or a further one (``and #5-...``, ``, #81-...``) on a line citing docs/METHOD.md.
ANCHOR = re.compile(r"(?:METHOD\.md|[\s(,])#([a-z0-9][a-z0-9-]*[a-z0-9])")
#: A citation of the method by section number without the project's file (``METHOD §3``, ``METHOD.md section 8``).
BARE = re.compile(r"(?<!docs/)METHOD(?:\.md)?,? *(?:§|sections? )")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a markdown heading: lowercased, punctuation other than '-' and '_' dropped, spaces
    made '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors() -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in METHOD.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT,
                           capture_output=True, text=True, check=True).stdout.split()
    return [PROJECT / n for n in names if Path(n).suffix in (".py", ".md", ".yaml", ".yml", ".sh", ".toml")]


def test_github_anchor_matches_githubs_rule():
    assert github_anchor(" 8.4 Value cards") == "84-value-cards"
    assert github_anchor("7. The paper's models") == "7-the-papers-models"
    assert github_anchor("5. Implicit rewards and MWLR (Table 1, Figure 3)") == \
        "5-implicit-rewards-and-mwlr-table-1-figure-3"


def test_every_cited_section_of_docs_method_exists():
    known = anchors()
    cited: dict[str, list[str]] = {}
    for path in tracked_text_files():
        if path.name == "test_method_doc.py":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "METHOD.md" in line or (path == METHOD and "](#" in line):
                for anchor in ANCHOR.findall(line):
                    cited.setdefault(anchor, []).append(f"{path.relative_to(PROJECT)}:{number}")
    missing = {a: where for a, where in cited.items() if a not in known}
    assert not missing, f"cited sections missing from docs/METHOD.md: {missing}"
    # every numbered section of the method is cited from somewhere in the code, the configs or the docs
    assert {"1-prompts", "2-corpora", "31-scoring", "32-ranks", "33-rank-cells", "34-mixed-model", "35-family-tests",
            "42-word-rule", "43-anova-and-post-hoc-tests", "5-implicit-rewards-and-mwlr-table-1-figure-3",
            "6-vocabulary-sweep", "7-the-papers-models", "81-figure-2-per-pair", "82-interaction-test",
            "83-frequency-control", "84-value-cards", "85-invariance-audit", "data-sources"} <= set(cited)


def test_nothing_cites_a_method_outside_the_project():
    offenders = []
    for path in tracked_text_files():
        if path.name == "test_method_doc.py":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "shared/METHOD" in line or BARE.search(line):
                offenders.append(f"{path.relative_to(PROJECT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
    assert "](docs/METHOD.md" in (PROJECT / "README.md").read_text()
