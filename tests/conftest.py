"""Shared fixtures: tiny config overrides, one tiny COCONUT run trained once per session, a CLI runner, real data.

Nothing is downloaded (HF_HUB_OFFLINE=1). Real data sets (GSM8K, GSM8k-Aug, ProsQA) come from the folder
named by COCONAV_TEST_DATA, laid out as gsm8k/{train,test}.jsonl, gsm8k_aug/{valid,test}.txt and
prosqa/{valid,test}.json; tests that need it skip, with the reason, only when the variable is unset
(`.ci/run` sets it, so nothing is skipped there). torch runs on one thread: on a loaded 2-core machine
the default two threads make these tiny models ~50x slower (thread contention, not compute).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
DEMO_PRESET = REPO / "coconav" / "recipes" / "demo.yaml"
TEST_DATA_VARIABLE = "COCONAV_TEST_DATA"


def real_data_path(relative: str) -> Path:
    """`$COCONAV_TEST_DATA/relative`: skips when the variable is unset, fails when the file is missing."""
    folder = os.environ.get(TEST_DATA_VARIABLE)
    if not folder:
        pytest.skip(f"{TEST_DATA_VARIABLE} is not set (a folder laid out like the project's shared data: "
                    "gsm8k/, gsm8k_aug/, prosqa/)")
    path = Path(folder) / relative
    assert path.is_file(), f"{TEST_DATA_VARIABLE}={folder} has no {relative}"
    return path


@pytest.fixture
def real_data():
    """The real-data lookup as a fixture: real_data("gsm8k/test.jsonl") -> Path (see real_data_path)."""
    return real_data_path

TINY_OVERRIDES = [
    "threads=1",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "data.train_size=64",
    "data.validation_size=8",
    "data.test_size=8",
    "train.batch_size=8",
    "train.first_stage_steps=2",
    "train.steps_per_stage=1",
    "train.warmup_steps=1",
    "eval.max_new_tokens=8",
    "log.progress=false",
]

# A tqdm bar line (transformers prints "Loading weights: 100%|####| 11/11 [...]" on stderr).
_PROGRESS_RE = re.compile(r"^[^:\n]*:\s*\d+%\|.*\|")


@dataclass
class CliResult:
    """What one `coconav` call did: exit code, stdout, stderr."""

    rc: int
    out: str
    err: str

    def stderr_lines(self, drop_progress: bool = True) -> list[str]:
        """Non-blank stderr lines; tqdm redraws ('\\r') are split, progress-bar lines dropped when asked."""
        lines = [line for line in re.split(r"[\r\n]+", self.err) if line.strip()]
        if drop_progress:
            lines = [line for line in lines if not _PROGRESS_RE.match(line)]
        return lines

    def error(self, drop_progress: bool = True) -> str:
        """The message of a user error: exit code 2, no traceback, exactly one `coconav: error:` line."""
        assert "Traceback" not in self.err, self.err
        assert self.rc == 2, f"exit code {self.rc}, stderr: {self.err!r}"
        lines = self.stderr_lines(drop_progress)
        assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
        assert lines[0].startswith("coconav: error: "), lines[0]
        return lines[0][len("coconav: error: "):]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Config overrides for a tiny, fast run (a copy: tests may extend it)."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def _cli_imports() -> None:
    """Import what the commands import lazily (seconds), once, in fixture setup rather than in a test."""
    import coconav.recipes.evaluate_checkpoint  # noqa: F401
    import coconav.recipes.train_coconut  # noqa: F401


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], _cli_imports: None):
    """Run `coconav ARGS...` in process: cli("train", "--config", ...) -> CliResult."""
    from coconav.cli import main

    def run(*argv: object) -> CliResult:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return CliResult(rc, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, _cli_imports: None) -> Path:
    """A finished tiny COCONUT run (stages 0-6, checkpoints, results.json), trained once per session.

    Read-only for tests: copy it (shutil.copytree) before changing anything inside.
    """
    from coconav.cli import main

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    rc = main(["train", "--config", str(DEMO_PRESET), *TINY_OVERRIDES, f"out_dir={out}"])
    assert rc == 0
    assert (out / "results.json").is_file()
    return out
