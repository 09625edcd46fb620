"""Worker for test_distributed.py: a few curriculum steps under torchrun (gloo), then each rank
writes its parameters to OUT/rank-R.safetensors so the test can compare them.

    torchrun --standalone --nproc_per_node 2 tests/recipes/ddp_worker.py OUT [key=value ...]
"""

import sys

from safetensors.torch import save_file

from coconav.config import load_config
from coconav.recipes import train_coconut

out, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config("coconav/recipes/demo.yaml", [f"out_dir={out}", *overrides])
run, state = train_coconut.build_run(cfg)
train_coconut.train_run(run, state)
rank = run.accelerator.process_index
params = {n: p.detach().contiguous() for n, p in run.accelerator.unwrap_model(run.model).named_parameters()}
save_file(params, f"{out}/rank-{rank}.safetensors")
print(f"rank {rank} of {run.accelerator.num_processes} done", flush=True)
