"""The product speaks of itself, not of how it was built.

README, docs, presets, the package and the benchmarks describe what coconav does and what it measured;
the history of how it got there lives in git. This test greps them for words of the development
process: work sessions and stops ("this session", "the last stop", "stop 3"), issue numbers
("issue 8", "issue #11") and commit hashes given as history ("commit `8aa44f7`", "git history at").
Product words stay fine: "halting stops", "stop thinking", "early stop on approx KL".

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_words.py
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACES = ["README.md", "mkdocs.yml", "docs", "coconav", "benchmarks", "configs"]
SUFFIXES = {".md", ".py", ".yaml", ".yml", ".html", ".txt", ".toml", ".cfg", ".json"}
PATTERNS = [
    (re.compile(r"\b(this|last|next|previous|earlier) (stop|session)('s)?\b", re.I), "a work session or stop"),
    (re.compile(r"\bsessions?\b", re.I), "a work session"),
    (re.compile(r"\bstop \d+\b", re.I), "a numbered stop"),
    (re.compile(r"\bissue #?\d+\b", re.I), "an issue number"),
    (re.compile(r"\b(the|this) issue's\b", re.I), "the issue behind the work"),
    (re.compile(r"\bcommit `?[0-9a-f]{7,40}\b", re.I), "a commit hash as history"),
    (re.compile(r"\bgit history at\b", re.I), "a commit hash as history"),
]


def scanned_files() -> list[Path]:
    """Text files under PLACES (a symlinked folder such as configs/ is read once, by its real path)."""
    seen, files = set(), []
    for place in PLACES:
        path = ROOT / place
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for p in candidates:
            if p.suffix in SUFFIXES and "__pycache__" not in p.parts and p.resolve() not in seen:
                seen.add(p.resolve())
                files.append(p)
    return files


def process_words(path: Path, root: Path = ROOT) -> list[str]:
    """'file:line: what: the line' for every development-process phrase in `path` (named relative to `root`)."""
    hits = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        for pattern, what in PATTERNS:
            if pattern.search(line):
                hits.append(f"{path.relative_to(root)}:{number}: {what}: {line.strip()[:120]}")
                break
    return hits


def test_scans_the_product():
    names = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    assert "README.md" in names and "coconav/config.py" in names, sorted(names)[:20]
    assert any(n.startswith("docs/") for n in names) and any(n.endswith(".yaml") for n in names)


def test_patterns_catch_process_words_and_spare_product_words(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text("Measured in this session.\nAfter the last stop's fix.\nSee issue #8.\nAt commit `8aa44f7`.\n")
    good = tmp_path / "good.md"
    good.write_text(
        "Halting stops the thoughts.\nThe navigator learns when to stop thinking.\n"
        "PPO epochs early stop on approx KL.\n"
    )
    lines = [hit.split(":")[1] for hit in process_words(bad, tmp_path)]
    assert lines == ["1", "2", "3", "4"], process_words(bad, tmp_path)
    assert process_words(good, tmp_path) == []


def test_no_development_process_words():
    hits = [hit for path in scanned_files() for hit in process_words(path)]
    assert not hits, "the product speaks of its development process (history belongs in git):\n" + "\n".join(hits)
