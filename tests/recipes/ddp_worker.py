"""Worker for test_distributed.py: a few curriculum steps under torchrun (gloo). Each rank of a data
parallel run then writes its parameters to OUT/rank-R.safetensors so the test can compare them
(a sharded run, train.fsdp=true, holds only slices: its checkpoints are compared instead).

    torchrun --standalone --nproc_per_node 2 tests/recipes/ddp_worker.py OUT [key=value ...]
    torchrun --standalone --nproc_per_node 2 tests/recipes/ddp_worker.py --resume OUT [key=value ...]
"""

import sys

from safetensors.torch import save_file

from coconav.config import load_config
from coconav.distributed import is_sharded
from coconav.recipes import train_coconut

args = sys.argv[1:]
resume = args[0] == "--resume"
out, overrides = (args[1], args[2:]) if resume else (args[0], args[1:])
cfg = load_config("configs/demo.yaml", [f"out_dir={out}", *overrides])
run, state = train_coconut.build_run(cfg, resume=out if resume else None)
train_coconut.train_run(run, state, resumed=resume)
rank = run.accelerator.process_index
if not is_sharded(run.model):
    params = {n: p.detach().contiguous() for n, p in run.accelerator.unwrap_model(run.model).named_parameters()}
    save_file(params, f"{out}/rank-{rank}.safetensors")
print(f"rank {rank} of {run.accelerator.num_processes} done", flush=True)
