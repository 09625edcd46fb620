"""Two CPU processes on gloo (torchrun): data parallel ranks agree, a 2-process run equals a 1-process
run with the same global batch (also across a resume), and a sharded run (train.fsdp, torch FSDP2)
equals the data parallel one and writes checkpoints that load and evaluate in one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "data.train_size=256",
    "data.validation_size=0",
    "data.test_size=0",
    "train.batch_size=8",
    "train.first_stage_steps=3",
    "train.steps_per_stage=2",
    "train.warmup_steps=1",
    "curriculum.max_stage=2",
    "train.final_stage_steps=1",
    "log.progress=false",
    "threads=1",
    "train.grad_accum=2",
]
# the same global batch of 16 examples in 4 micro-batches of 4, on 2 ranks or on 1, length-grouped (pools of 2
# global batches, re-arranged after mixing); validation for the FSDP check
EQUAL = [*TINY, "train.length_pool=2", "data.validation_size=8", "curriculum.mix_prob=0.3"]
TWO_RANKS = ["train.batch_size=8", "train.grad_accum=2"]
ONE_RANK = ["train.batch_size=16", "train.grad_accum=4"]
LAST = "stage-3"


def launch(out: Path, overrides: list[str], nproc: int = 2, resume: bool = False) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(ROOT / "tests/recipes/ddp_worker.py"),
        *(["--resume"] if resume else []),
        str(out),
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in range(nproc):
        assert f"rank {r} of {nproc} done" in proc.stdout, proc.stdout
    return proc.stdout


def weights(run: Path, name: str = LAST) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / name / "model.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=name)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """A 2-process data parallel run (global batch 16), shared by the tests below."""
    out = tmp_path_factory.mktemp("ddp")
    launch(out, [*EQUAL, *TWO_RANKS])
    return out


def test_two_ranks_hold_identical_weights(tmp_path):
    launch(tmp_path, TINY)
    a, b = load_file(tmp_path / "rank-0.safetensors"), load_file(tmp_path / "rank-1.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)
    # training moved the weights away from the initial checkpoint-free state: stage checkpoints exist
    assert (tmp_path / "checkpoints" / "stage-2").is_dir()


def test_two_processes_equal_one_process_with_the_same_global_batch_also_after_a_resume(ddp_run, tmp_path):
    one = tmp_path / "one"
    launch(one, [*EQUAL, *ONE_RANK], nproc=1)
    assert_same(weights(ddp_run), weights(one))
    assert not torch.equal(
        weights(one, "stage-0")["model.embed_tokens.weight"], weights(one)["model.embed_tokens.weight"]
    )
    # resume the 2-process run from its stage-1 checkpoint (optimizer state, position) to the end
    resumed = tmp_path / "resumed"
    shutil.copytree(ddp_run, resumed)
    for name in ("stage-2", LAST):
        shutil.rmtree(resumed / "checkpoints" / name)
    launch(resumed, [*EQUAL, *TWO_RANKS], resume=True)
    assert_same(weights(resumed), weights(one))


def test_fsdp_run_equals_ddp_and_its_checkpoint_reloads_and_evaluates_in_one_process(ddp_run, tmp_path):
    from coconav.config import load_config
    from coconav.data.splits import load_splits
    from coconav.eval.evaluate import evaluate
    from coconav.io.checkpoint import load_trainer_state, read_optimizer_state
    from coconav.model.latent_lm import LatentLM

    launch(tmp_path, [*EQUAL, *TWO_RANKS, "train.fsdp=true"])
    assert not list(tmp_path.glob("rank-*.safetensors"))  # the sharded worker really ran sharded
    assert_same(weights(tmp_path), weights(ddp_run))
    # the optimizer state was gathered in full, in the layout a 1-process optimizer loads
    sharded, full = (
        read_optimizer_state(tmp_path / "checkpoints" / LAST),
        read_optimizer_state(ddp_run / "checkpoints" / LAST),
    )
    assert sharded["state"].keys() == full["state"].keys() and full["state"]
    for pid, slots in full["state"].items():
        for key, value in slots.items():
            torch.testing.assert_close(sharded["state"][pid][key], value, atol=1e-6, rtol=1e-5)
    # reload in this one process and evaluate: the stage's validation numbers recorded by rank 0 agree
    ckpt = tmp_path / "checkpoints" / LAST
    lm = LatentLM.from_pretrained(ckpt)
    assert load_trainer_state(ckpt, restore_rng=False).stage_done
    cfg = load_config("configs/demo.yaml", [f"out_dir={tmp_path}", *EQUAL, *TWO_RANKS])
    recorded = json.loads((tmp_path / "stages.json").read_text())[-1]
    result = evaluate(
        lm,
        load_splits(cfg.data, cfg.seed).validation,
        recorded["mode"],
        recorded["num_thoughts"],
        cfg.eval,
        seed=cfg.seed,
    ).summary()
    # means of counts, but summed in another order by two ranks than by one process: equal up to the last digit
    for key in ("accuracy", "mean_thoughts", "mean_new_tokens", "mean_forward_passes", "num_questions"):
        assert result[key] == pytest.approx(recorded[key], rel=1e-9), key
    # a sharded resume from stage 1 takes its slice of the saved full optimizer state and ends where DDP did
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path, resumed, ignore=shutil.ignore_patterns("resumed"))
    for name in ("stage-2", LAST):
        shutil.rmtree(resumed / "checkpoints" / name)
    launch(resumed, [*EQUAL, *TWO_RANKS, "train.fsdp=true"], resume=True)
    assert_same(weights(resumed), weights(ddp_run))


@pytest.mark.parametrize("variant", ["navigator", "train_lm", "multi"])
def test_navigator_ppo_on_two_ranks_keeps_identical_navigators_and_splits_the_global_batch(tiny_run, tmp_path, variant):
    import yaml

    from tests.recipes.test_train_navigator import nav_config

    out = tmp_path / "nav"
    train_lm, K = variant == "train_lm", 2 if variant == "multi" else 1
    cfg = nav_config(tiny_run, out, updates=3, eval_every=3, target_kl=0.01)  # the KL early stop must agree too
    if K > 1:  # two trajectories per question, group advantages scaled over the global batch, fused by the scorer
        cfg["ppo"].update(num_trajectories=K, advantage="group", scale_rewards="batch", fusion="scorer")
        cfg["navigator"]["memory_size"] = 64  # room for every trajectory: none is turned away by a full bank
        cfg["navigator"]["steer_scale"] = "rms"  # measured on the global batch: the same scale on both ranks
    if train_lm:  # the LM's LoRA adapters train too: their gradients are averaged with the navigator's
        cfg["ppo"].update(train_lm=True, beta=0.1, lm_lr=1e-2)
        cfg["model"] = {"lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}}
    (tmp_path / "nav.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests/recipes/nav_worker.py"),
        str(tmp_path / "nav.yaml"),
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("navigator done") == 2, proc.stdout
    a, b = load_file(out / "nav-rank-0.safetensors"), load_file(out / "nav-rank-1.safetensors")
    assert a.keys() == b.keys() and "bank.keys" in a
    assert any(k.startswith("lm.") and "lora_" in k for k in a) == train_lm
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)
    assert int(a["bank.count"]) == 3 * cfg["ppo"]["rollout_batch"] * K  # every rank remembered the whole global batch
    # the fusion scorer and the K-selector trained too, identically on both ranks (compared above)
    assert (float(a["thought_rms"]) > 0) == (K > 1)
    assert float(a["scorer_head.weight"].abs().sum()) > 0 and float(a["selector.3.weight"].abs().sum()) > 0
    # the navigator trained (its steering started at zero) and rank 0 alone wrote the checkpoint
    assert float(a["up.weight"].abs().sum()) > 0
    saved = load_file(out / "checkpoints" / "last" / "navigator.safetensors")
    torch.testing.assert_close(saved["up.weight"], a["up.weight"], atol=0, rtol=0)
    # each rank rolled out its own half of each update's global batch
    q0 = json.loads((out / "questions-rank-0.json").read_text())
    q1 = json.loads((out / "questions-rank-1.json").read_text())
    assert len(q0) == len(q1) == 3 and all(len(x) == len(y) == cfg["ppo"]["rollout_batch"] // 2 for x, y in zip(q0, q1))
    assert q0 != q1
    if K > 1:
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        logged = [r for r in records if "rollout/k_mean" in r]
        assert len(logged) == 3 and all(r["rollout/k_mean"] == K and "ppo/selector_loss" in r for r in logged)
        assert json.loads((out / "results.json").read_text())["navigator_multi"]["mean_trajectories"] == K
