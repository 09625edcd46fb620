"""Worker for test_distributed.py: a few PPO updates of the navigator under torchrun (gloo). Each rank
writes its navigator's parameters and buffers (the memory bank) and the LM's trainable adapters to OUT/nav-rank-R.safetensors and the
questions it rolled out to OUT/questions-rank-R.json, so the test can compare the ranks.

    torchrun --standalone --nproc_per_node 2 tests/recipes/nav_worker.py CONFIG.yaml OUT
"""

import json
import sys

from safetensors.torch import save_file

from coconav.config import load_config
from coconav.recipes import train_navigator

config, out = sys.argv[1], sys.argv[2]
cfg = load_config(config, [])
seen: list[list[str]] = []
sample = train_navigator.sample_questions


def recording_sample(run, update):
    batch = sample(run, update)
    seen.append([ex.question for ex in batch])
    return batch


def recording_build(*args, **kwargs):
    run, start = build(*args, **kwargs)
    runs.append(run)
    return run, start


def barrier_and_dump(accelerator):  # every rank calls the barrier, the last time after the final evaluation
    wait(accelerator)
    run = runs[-1]
    rank = run.accelerator.process_index
    state = {k: v.detach().contiguous() for k, v in run.navigator.state_dict().items()}
    state.update({f"lm.{n}": p.detach().contiguous() for n, p in run.lm.named_parameters() if p.requires_grad})
    save_file(state, f"{out}/nav-rank-{rank}.safetensors")
    with open(f"{out}/questions-rank-{rank}.json", "w") as f:
        json.dump(seen, f)


wait, build, runs = train_navigator.barrier, train_navigator.build, []
train_navigator.build = recording_build
train_navigator.sample_questions = recording_sample
train_navigator.barrier = barrier_and_dump
train_navigator.train(cfg)
print("navigator done", flush=True)
