"""Two CPU processes on gloo (torchrun): data parallel training keeps both ranks' weights identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.hidden_size=16", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=32",
        "data.train_size=256", "data.validation_size=0", "data.test_size=0", "train.batch_size=8",
        "train.first_stage_steps=3", "train.steps_per_stage=2", "train.warmup_steps=1", "curriculum.max_stage=2",
        "train.final_stage_steps=1", "log.progress=false", "threads=1", "train.grad_accum=2"]


def test_two_ranks_hold_identical_weights(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests/recipes/ddp_worker.py"), str(tmp_path), *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2 done" in proc.stdout and "rank 1 of 2 done" in proc.stdout, proc.stdout
    a, b = load_file(tmp_path / "rank-0.safetensors"), load_file(tmp_path / "rank-1.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)
    # training moved the weights away from the initial checkpoint-free state: stage checkpoints exist
    assert (tmp_path / "checkpoints" / "stage-2").is_dir()
