"""Checkpoints: atomic writes, exact round trips, plain transformers loading, no pickles, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from coconav.cli import main
from coconav.config import ModelConfig
from coconav.data.tasks import get_task
from coconav.data.tokenizer import build_word_tokenizer
from coconav.errors import CheckpointError
from coconav.io.checkpoint import (
    TrainState,
    checkpoint_meta,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
)
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import LatentLM

REPO = Path(__file__).resolve().parent.parent
DEMO_PRESET = REPO / "configs" / "demo.yaml"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}


def tiny_lm(seed: int = 0) -> LatentLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, thought_norm="embedding", tie_embeddings=True
    )
    return build_latent_lm(cfg, build_word_tokenizer(get_task("arithmetic").vocabulary()))


def batch(lm: LatentLM) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows aligned on <bot>: two thoughts, and one thought (padded on the right), then an answer."""
    s, tok = lm.special, lm.tokenizer
    q = tok("3 + 4 ?", add_special_tokens=False)["input_ids"]
    a = tok("### 7", add_special_tokens=False)["input_ids"]
    rows = [q + [s.bot, s.thought, s.thought, s.eot] + a + [s.eos], q + [s.bot, s.thought, s.eot] + a + [s.eos, s.pad]]
    ids = torch.tensor(rows)
    mask = (ids != s.pad).long()
    return ids, mask


def trained(lm: LatentLM, steps: int = 3) -> torch.optim.Optimizer:
    """A few AdamW steps, so the optimizer has non-trivial moments."""
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.01)
    ids, mask = batch(lm)
    labels = ids.masked_fill(mask == 0, -100)
    for _ in range(steps):
        lm(ids, mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt


def one_step(lm: LatentLM, opt: torch.optim.Optimizer) -> None:
    ids, mask = batch(lm)
    lm(ids, mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def save(lm: LatentLM, folder: Path, global_step: int = 3, opt: torch.optim.Optimizer | None = None, **kw) -> Path:
    state = TrainState(stage=1, step=global_step, global_step=global_step, stage_done=False)
    return save_checkpoint(folder, lm, state, {"seed": 0}, optimizer=opt, **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[LatentLM, torch.optim.Optimizer, Path]:
    """A trained tiny model, its optimizer, and its checkpoint folder (read-only for tests)."""
    lm = tiny_lm()
    opt = trained(lm)
    folder = save(lm, tmp_path_factory.mktemp("ckpt") / "checkpoints" / "stage-1", opt=opt)
    return lm, opt, folder


# -- atomic writes --------------------------------------------------------------------------------


def test_save_leaves_no_temp_folder(tmp_path: Path) -> None:
    lm = tiny_lm()
    root = tmp_path / "checkpoints"
    save(lm, root / "last", global_step=2)
    assert sorted(p.name for p in root.iterdir()) == ["last"]
    # overwriting swaps the folder in whole: no .last.tmp or .last.old left behind
    save(lm, root / "last", global_step=4)
    assert sorted(p.name for p in root.iterdir()) == ["last"]
    assert checkpoint_meta(root / "last")["train_state"]["global_step"] == 4


def test_save_replaces_a_stale_temp_folder(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    stale = root / ".last.tmp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half a file")
    save(tiny_lm(), root / "last")
    assert sorted(p.name for p in root.iterdir()) == ["last"]
    LatentLM.from_pretrained(root / "last")


def test_leftover_temp_folders_are_ignored(saved, tmp_path: Path) -> None:
    _, _, folder = saved
    run = tmp_path / "run"
    root = run / "checkpoints"
    shutil.copytree(folder, root / "stage-1")
    # an interrupted save of a later checkpoint: complete-looking, but still under its temporary name
    for name in (".stage-2.tmp", ".last.old"):
        shutil.copytree(folder, root / name)
        meta = json.loads((root / name / "coconav.json").read_text(encoding="utf-8"))
        meta["train_state"]["global_step"] = 99
        (root / name / "coconav.json").write_text(json.dumps(meta), encoding="utf-8")
    (root / "stage-3").mkdir()  # weights written, metadata not
    shutil.copy(folder / "model.safetensors", root / "stage-3")
    (root / "stage-4").mkdir()  # metadata cut short
    (root / "stage-4" / "coconav.json").write_text('{"format_version": 1, "train_st', encoding="utf-8")
    assert list_checkpoints(run) == [root / "stage-1"]
    assert latest_checkpoint(run) == root / "stage-1"


def test_no_checkpoint_but_temp_folders(saved, tmp_path: Path) -> None:
    _, _, folder = saved
    shutil.copytree(folder, tmp_path / "checkpoints" / ".stage-0.tmp")
    assert list_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointError, match="no complete checkpoint under"):
        latest_checkpoint(tmp_path)


def test_checkpoints_ordered_by_global_step(saved, tmp_path: Path) -> None:
    lm, opt, _ = saved
    root = tmp_path / "checkpoints"
    save(lm, root / "stage-0", global_step=2)
    save(lm, root / "last", global_step=5)
    save(lm, root / "stage-1", global_step=7)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["stage-0", "last", "stage-1"]


# -- exact round trips -----------------------------------------------------------------------------


def test_optimizer_state_round_trips_exactly(saved) -> None:
    lm, opt, folder = saved
    loaded = LatentLM.from_pretrained(folder)
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1.0, betas=(0.5, 0.5), weight_decay=0.0)  # overwritten by the load
    state = load_trainer_state(folder, opt2, restore_rng=False)
    assert state == TrainState(stage=1, step=3, global_step=3, stage_done=False)
    a, b = opt.state_dict(), opt2.state_dict()
    # JSON turns the betas tuple into a list; AdamW unpacks either the same way
    assert [{**g, "betas": tuple(g["betas"])} for g in a["param_groups"]] == [
        {**g, "betas": tuple(g["betas"])} for g in b["param_groups"]
    ]
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) == len(list(lm.parameters()))
    for pid, slots in a["state"].items():
        assert slots.keys() == b["state"][pid].keys()
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(slots[key], b["state"][pid][key]), (pid, key)
            assert slots[key].dtype == b["state"][pid][key].dtype
    assert any(s["exp_avg"].abs().sum() > 0 for s in a["state"].values())


def test_training_continues_identically_after_load(saved) -> None:
    lm, opt, folder = saved
    original = tiny_lm()
    original.load_state_dict(lm.state_dict())
    opt1 = torch.optim.AdamW(original.parameters())
    opt1.load_state_dict(opt.state_dict())
    loaded = LatentLM.from_pretrained(folder, trainable=True)  # loading to train on
    opt2 = torch.optim.AdamW(loaded.parameters())
    load_trainer_state(folder, opt2, restore_rng=False)
    one_step(original, opt1)
    one_step(loaded, opt2)
    for (name, p1), p2 in zip(original.named_parameters(), loaded.parameters()):
        assert torch.equal(p1, p2), name


def test_rng_and_extra_modules_round_trip(tmp_path: Path) -> None:
    lm = tiny_lm()
    head = torch.nn.Linear(4, 3)
    torch.manual_seed(123)
    folder = save(lm, tmp_path / "ckpt", modules={"navigator": head})
    expected = torch.rand(5)
    torch.manual_seed(0)  # move the generator elsewhere
    head2 = torch.nn.Linear(4, 3)
    load_trainer_state(folder, modules={"navigator": head2})
    assert torch.equal(torch.rand(5), expected)
    for key, value in head.state_dict().items():
        assert torch.equal(value, head2.state_dict()[key])


def test_from_pretrained_gives_identical_logits(saved) -> None:
    lm, _, folder = saved
    loaded = LatentLM.from_pretrained(folder).eval()
    lm.eval()
    assert loaded.thought_norm == "embedding" and loaded.special == lm.special
    ids, mask = batch(lm)
    with torch.no_grad():
        a = lm(ids, mask, return_logits=True).logits
        b = loaded(ids, mask, return_logits=True).logits
    assert torch.equal(a, b)
    prompt = ids[0, : int((ids[0] == lm.special.bot).nonzero()[0]) + 1].tolist()
    g1 = lm.generate([prompt], num_thoughts=2, max_new_tokens=4)
    g2 = loaded.generate([prompt], num_thoughts=2, max_new_tokens=4)
    assert torch.equal(g1.sequences, g2.sequences) and g1.texts == g2.texts


def test_plain_transformers_loads_the_folder(saved) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm, _, folder = saved
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.get_vocab() == lm.tokenizer.get_vocab()
    text = "<bot> <thought> <eot> 3 + 4 ? ### 7"
    assert tokenizer(text)["input_ids"] == lm.tokenizer(text)["input_ids"]
    assert tokenizer.pad_token == lm.tokenizer.pad_token and tokenizer.eos_token == lm.tokenizer.eos_token
    ids = torch.tensor([tokenizer("3 + 4 ? ### 7", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, lm.eval().causal_lm(ids).logits)


def test_no_file_in_a_checkpoint_is_a_pickle(saved, tiny_run: Path) -> None:
    _, _, folder = saved
    folders = [folder, *list_checkpoints(tiny_run)]
    assert len(folders) > 2
    for ckpt in folders:
        names = sorted(p.name for p in ckpt.iterdir())
        assert {"coconav.json", "model.safetensors", "trainer_state.safetensors", "trainer_state.json"} <= set(names)
        for path in ckpt.iterdir():
            assert path.is_file(), path
            assert path.suffix not in PICKLE_SUFFIXES, path
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    assert list(f.keys())
                continue
            head = path.read_bytes()[:4]
            assert not head.startswith(b"PK\x03\x04"), f"{path} is a zip (torch.save) archive"
            assert not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), f"{path} is a pickle"
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))


# -- kill and resume --------------------------------------------------------------------------------


def metric_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [rec["step"] for rec in map(json.loads, lines) if "train/loss" in rec]


def test_kill_and_resume(tmp_path: Path, tiny_overrides: list[str]) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / "last"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "coconav",
        "train",
        "--config",
        str(DEMO_PRESET),
        *tiny_overrides,
        "train.save_every=2",
        "train.first_stage_steps=40",
        "train.log_every=1",
        f"out_dir={run}",
    ]
    log = (tmp_path / "train.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not last.exists():
            assert proc.poll() is None, (tmp_path / "train.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "no checkpoints/last after 240 s"
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert not (run / "results.json").exists()

    # only complete checkpoints are listed, and each of them loads; anything else is a dot-folder
    found = list_checkpoints(run)
    assert found
    for path in (run / "checkpoints").iterdir():
        if path in found:
            LatentLM.from_pretrained(path)
            load_trainer_state(path, restore_rng=False)
        else:
            assert path.name.startswith("."), f"{path} is neither complete nor temporary"
    saved = load_trainer_state(found[-1], restore_rng=False)
    assert saved.global_step >= 2 and saved.global_step % 2 == 0 or saved.stage_done
    logged_before = len(metric_steps(run))
    print(f"killed at step {metric_steps(run)[-1] if logged_before else 0}; resuming from {found[-1].name} {saved}")

    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "results.json").is_file()
    total = 40 + 6  # stage 0, then one step in each of stages 1..6
    after = metric_steps(run)[logged_before:]
    assert after == list(range(saved.global_step + 1, total + 1)), after  # continues, does not restart at 1
    stages = json.loads((run / "stages.json").read_text(encoding="utf-8"))
    assert [s["stage"] for s in stages] == list(range(7))
    assert [s["global_step"] for s in stages] == list(range(40, total + 1))
