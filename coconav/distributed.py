"""Several processes: this process's rank, the collectives the recipes need (through accelerate), and
sharded training with torch's FSDP2 with the gathers that checkpoints and evaluation need around it.

Data parallel training (DDP) goes through accelerate; with ``train.fsdp`` the latent LM is instead
sharded by ``torch.distributed.fsdp.fully_shard`` (FSDP2) as one unit, the LatentLM: weights,
gradients and optimizer state are sharded at rest, gathered once per forward and once per backward,
and the whole thought loop runs inside that one ``forward``. Decoder layers are deliberately not
units of their own: the thought loop calls each layer once per thought, the number of thoughts of a
batch differs between ranks, and FSDP's per-call collectives would then not match (a hang, seen on
2 CPU ranks). accelerate's own FSDP plugin refuses CPU; FSDP2 runs on CPU with gloo as well as on
GPUs with NCCL.

Sharded weights exist on no single rank, so saving and evaluating are collective: every rank calls
``gather_model_state`` / ``gather_optimizer_state`` (rank 0 receives the full tensors on the CPU,
the others an empty dict) and rank 0 alone writes or evaluates, on the plain module that
``unsharded_lm`` rebuilds from them. The optimizer state is gathered into torch's ordinary
index-keyed layout, so a checkpoint of a sharded run loads in one process like any other.

    shard_lm(lm)                                   # every rank, before building the optimizer
    state = gather_model_state(lm)                 # every rank
    if is_main(): unsharded_lm(lm, state).save_pretrained(folder)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from coconav.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Whether this process writes files (rank 0)."""
    return rank() == 0


def rank_and_world(accelerator: Accelerator | None) -> tuple[int, int]:
    """(this process's index, number of processes) of `accelerator`; (0, 1) without one."""
    return (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)


def is_writer(accelerator: Accelerator | None) -> bool:
    """Only the main process writes files."""
    return accelerator is None or accelerator.is_main_process


def barrier(accelerator: Accelerator | None) -> None:
    """Wait for every process (nothing without an accelerator)."""
    if accelerator is not None:
        accelerator.wait_for_everyone()


def gather_global(accelerator: Accelerator | None, tensor: torch.Tensor) -> torch.Tensor:
    """Collective: the processes' tensors concatenated in rank order (the tensor itself in one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return tensor
    return accelerator.gather(tensor.contiguous().to(accelerator.device)).to(tensor.device)


def mean_over_ranks(accelerator: Accelerator | None, value: torch.Tensor) -> float:
    """Collective: the mean of a scalar over the processes, so that every process takes the same decision."""
    if accelerator is None or accelerator.num_processes == 1:
        return float(value)
    return float(accelerator.reduce(value.detach().float().reshape(1).to(accelerator.device), "mean"))


def sum_over_ranks(accelerator: Accelerator | None, values: list[int]) -> list[int]:
    """Collective: the element-wise sum of `values` over the processes."""
    if accelerator is None or accelerator.num_processes == 1:
        return values
    summed = accelerator.reduce(torch.tensor(values, dtype=torch.long, device=accelerator.device), "sum")
    return [int(v) for v in summed.tolist()]


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether `module` was sharded by `shard_lm`."""
    return isinstance(module, FSDPModule)


def check_engine(accelerator) -> None:
    """Refuse accelerate engines whose sharded weights coconav's checkpoints cannot gather.

    Sharding runs through torch FSDP2 (train.fsdp); accelerate then only launches the processes.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise ConfigError(
            "accelerate's FSDP plugin is not supported: launch with configs/accelerate/fsdp.yaml "
            "(or ddp.yaml, or torchrun) and set train.fsdp=true, which shards with torch FSDP2"
        )
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if kind == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3:
        raise ConfigError(
            "DeepSpeed ZeRO-3 is not supported (its checkpoints are not gathered): "
            "set train.fsdp=true for sharded training, or use ZeRO stage 1-2"
        )


def shard_lm(lm: torch.nn.Module) -> torch.nn.Module:
    """Shard `lm`, a LatentLM, in place over the default process group, as one FSDP unit (see module docstring).
    It is typed as a module: the ground floor imports nothing from the rooms above it.

    Full fine-tuning only: a LoRA-wrapped backbone is refused (train it with DDP).
    """
    if not (dist.is_available() and dist.is_initialized()) or world_size() < 2:
        raise ConfigError("train.fsdp needs several processes: launch with torchrun or accelerate launch")
    if lm.model is not lm.causal_lm:
        raise ConfigError("train.fsdp shards full fine-tuning only: drop model.lora, or train LoRA with DDP")
    fully_shard(lm)
    return lm


def gather_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the full state dict of a sharded module on rank 0 (CPU), {} on other ranks."""
    return get_model_state_dict(model, options=FULL_ON_RANK0)


def gather_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: the full optimizer state on rank 0 in torch's index-keyed layout, {} elsewhere.

    torch's distributed state dict names parameters by their path; they are renumbered in the
    order of the param groups, which is the order `optimizer.state_dict()` uses.
    """
    named = get_optimizer_state_dict(model, _inner(optimizer), options=FULL_ON_RANK0)
    if not named:
        return {}
    index = {fqn: i for i, fqn in enumerate(fqn for group in named["param_groups"] for fqn in group["params"])}
    groups = [{**group, "params": [index[fqn] for fqn in group["params"]]} for group in named["param_groups"]]
    return {"state": {index[fqn]: slots for fqn, slots in named["state"].items()}, "param_groups": groups}


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Every rank: load a full index-keyed optimizer state (as a checkpoint holds it) into its shards."""
    names = {id(p): fqn for fqn, p in model.named_parameters()}
    params = [p for group in _inner(optimizer).param_groups for p in group["params"]]
    fqns = [names[id(p)] for p in params]
    named = {
        "state": {fqns[int(i)]: slots for i, slots in state["state"].items()},
        "param_groups": [
            {**group, "params": [fqns[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, _inner(optimizer), named, options=StateDictOptions(full_state_dict=True))


def unsharded_lm(lm: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain (unsharded, CPU) LatentLM with the architecture of `lm` and the weights `state`
    (the full state dict of `lm`, as `gather_model_state` returns it on rank 0)."""
    from transformers.initialization import no_init_weights

    base = lm.causal_lm
    with no_init_weights():  # the weights come from `state`: skip the random initialisation
        model = type(base)(base.config)
    prefix = "model."
    weights = {name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)}
    model.load_state_dict(weights, strict=True, assign=True)
    model.tie_weights()
    model.eval()
    plain = next(c for c in type(lm).__mro__ if not issubclass(c, FSDPModule))  # LatentLM, not FSDP's subclass
    return plain(
        model,
        lm.tokenizer,
        thought_norm=lm.thought_norm,
        autocast="bfloat16" if lm.autocast_dtype is not None else "none",
    )


class OptimizerState:
    """A gathered optimizer state that `save_checkpoint` writes like an optimizer's own."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)
