"""coconav/common.py's metric logger with Weights & Biases: each run is named after its folder and keeps its W&B id
there, so that `coconav train --resume RUN` continues the same W&B run. A stand-in `wandb` module records what
would have been sent (nothing is installed or contacted)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from coconav.common import WANDB_ID_FILE, MetricLogger


class FakeWandb:
    """The part of the wandb module MetricLogger uses: util.generate_id, init -> a run with log and finish."""

    def __init__(self) -> None:
        self.inits: list[dict] = []
        self.logged: list[tuple[dict, int]] = []
        self.ids = iter(["id-one", "id-two", "id-three"])
        self.util = SimpleNamespace(generate_id=lambda: next(self.ids))

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return SimpleNamespace(log=lambda data, step: self.logged.append((data, step)), finish=lambda: None)


@pytest.fixture
def wandb(monkeypatch: pytest.MonkeyPatch) -> FakeWandb:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_a_wandb_run_is_named_after_its_folder_and_resumed_by_its_id(wandb: FakeWandb, tmp_path: Path) -> None:
    run = tmp_path / "arith-seed0"
    log = MetricLogger(run, wandb=True, wandb_project="proj", config={"seed": 0}, fresh=True)
    log.log({"train/loss": 1.5, "train/note": "text"}, step=3)
    log.close()
    first = wandb.inits[-1]
    assert (first["name"], first["id"], first["resume"], first["project"]) == ("arith-seed0", "id-one", "allow", "proj")
    assert (run / WANDB_ID_FILE).read_text().strip() == "id-one"
    assert wandb.logged == [({"train/loss": 1.5}, 3)]  # numbers only, as before

    MetricLogger(run, wandb=True, fresh=False)  # --resume: the same W&B run
    assert (wandb.inits[-1]["id"], wandb.inits[-1]["name"]) == ("id-one", "arith-seed0")
    MetricLogger(run, wandb=True, fresh=True)  # a new run in the folder: a new W&B run
    assert wandb.inits[-1]["id"] == "id-two" and (run / WANDB_ID_FILE).read_text().strip() == "id-two"


def test_no_wandb_no_id_file(tmp_path: Path) -> None:
    MetricLogger(tmp_path, fresh=True).log({"train/loss": 1.0}, step=1)
    assert not (tmp_path / WANDB_ID_FILE).exists()
