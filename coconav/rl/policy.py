"""The policy that PPO trains: the navigator, and under ppo.train_lm the LM's LoRA adapters beside it.

``PolicyReplay`` is ``replay`` (coconav.rl.rollout) as one module call: the one module that DDP wraps, so
that every backward follows one forward and the gradients of the navigator and of the LM's trainable
adapters are averaged over the ranks. With ppo.train_lm the LM is trained through LoRA adapters
(``enable_lm_training``) and a KL penalty keeps it near a frozen reference (``reference_policy``): the
adapters disabled for a full COCONUT model, or a frozen copy of a LoRA checkpoint's own adapter.

    lm, reference = enable_lm_training(lm, cfg.model, base)      # ppo.train_lm only
    optimizer = policy_optimizer(navigator, lm, cfg.ppo.lr, cfg.ppo.lm_lr)
    policy, optimizer = prepare_policy(accelerator, PolicyReplay(lm, navigator, reference), optimizer, batch)
    with reference_policy(lm, reference): ...                     # the KL reference in place of the policy
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors import SafetensorError
from safetensors.torch import load_file

from coconav.config import ModelConfig
from coconav.errors import CheckpointError, ConfigError
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator
from coconav.rl.rollout import Replay, Trajectories, replay

REFERENCE_ADAPTER = "reference"


class PolicyReplay(torch.nn.Module):
    """`replay` as one module call, so that DDP sees one forward per backward and averages the
    gradients of the navigator and of the LM's trainable adapters over the ranks. It also names the
    LM's KL reference (`reference_adapter`, ppo.train_lm)."""

    def __init__(self, lm: LatentLM, navigator: Navigator, reference_adapter: str | None = None) -> None:
        super().__init__()
        self.lm, self.navigator = lm, navigator
        self.reference_adapter = reference_adapter  # the KL reference under ppo.train_lm (see reference_policy)

    def forward(
        self,
        traj: Trajectories,
        idx: torch.Tensor,
        temperature: float,
        answer_in_policy: bool,
        train_scorer: bool = False,
        train_selector: bool = False,
    ) -> Replay:
        rep = replay(self.lm, self.navigator, traj, idx, temperature, answer_in_policy)
        # A head whose loss is off is detached: an output left in the graph but out of the loss would make
        # DDP wait for its gradients forever.
        if not train_scorer and rep.final_scores is not None:
            rep.final_scores = rep.final_scores.detach()
        if not train_selector and rep.success_logits is not None:
            rep.success_logits = rep.success_logits.detach()
        return rep


def make_accelerator() -> Accelerator:
    """accelerate's DDP (one process: a no-op); parameters a minibatch leaves unused (no thought
    steered, halting off) are allowed."""
    return Accelerator(
        cpu=not torch.cuda.is_available(), kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
    )


def policy_optimizer(navigator: Navigator, lm: LatentLM, lr: float, lm_lr: float) -> torch.optim.Adam:
    """Adam over the navigator's parameters (lr) and the LM's trainable ones, its LoRA adapters under
    ppo.train_lm (lm_lr); eps 1e-5 as cleanrl."""
    groups = [{"params": [p for p in navigator.parameters() if p.requires_grad], "lr": lr}]
    lm_params = [p for p in lm.parameters() if p.requires_grad]
    if lm_params:
        groups.append({"params": lm_params, "lr": lm_lr})
    return torch.optim.Adam(groups, eps=1e-5)


def prepare_policy(
    accelerator: Accelerator, policy: PolicyReplay, optimizer: torch.optim.Optimizer, rollout_batch: int
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Wrap the replay in DDP (and the optimizer), after the optimizer and a resume are loaded; the global
    rollout batch must split evenly over the processes."""
    world = accelerator.num_processes
    if rollout_batch % world:
        raise ConfigError(
            f"ppo.rollout_batch ({rollout_batch}) must be a multiple of the number of processes ({world})"
        )
    return accelerator.prepare(policy, optimizer)


def head_parameters(navigator: Navigator) -> list[torch.nn.Parameter]:
    """The fusion scorer's and K-selector's parameters (trained by their own losses, clipped apart)."""
    return [*navigator.scorer_head.parameters(), *navigator.selector.parameters()]


def enable_lm_training(lm: LatentLM, model_cfg: ModelConfig, base: Path) -> tuple[LatentLM, str | None]:
    """Make the LM's LoRA adapters trainable for the policy gradient; returns (lm, reference adapter name).

    A full COCONUT model gets fresh adapters (model_cfg.lora; zero update, so the policy starts as the
    model) and its reference is the model with the adapters disabled. A LoRA COCONUT checkpoint keeps
    training its own adapter ('default', latent-token rows included); a frozen copy loaded as adapter
    'reference' is the KL reference, so the reference is the COCONUT policy as loaded, never the bare base.
    """
    from coconav.model.build import apply_lora

    if lm.model is not lm.causal_lm:  # already a PEFT model: the COCONUT adapter itself
        lm.model.load_adapter(str(base), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        lm.model.set_adapter("default")  # active, and trainable (PEFT's set_adapter), the reference frozen
        return lm.eval(), REFERENCE_ADAPTER
    if model_cfg.lora is None:
        raise ConfigError("ppo.train_lm=true needs model.lora settings (the LM is trained through LoRA adapters)")
    model = apply_lora(lm.model, model_cfg, [])
    trained = LatentLM(
        model,
        lm.tokenizer,
        thought_norm=lm.thought_norm,
        autocast="bfloat16" if lm.autocast_dtype is not None else "none",
    ).to(lm.device)
    return trained.eval(), None


def load_adapter_weights(lm: LatentLM, ckpt: Path) -> None:
    """Load the trained adapter ('default') saved in a navigator checkpoint into `lm` (--resume)."""
    from peft import set_peft_model_state_dict

    path = ckpt / "adapter_model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: {path.name} is missing (was this run trained with ppo.train_lm=true?)")
    try:
        result = set_peft_model_state_dict(
            lm.model, load_file(str(path), device=str(lm.device)), adapter_name="default"
        )
    except (SafetensorError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot load ({str(err).strip().splitlines()[0][:200]})") from None
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: adapter weights do not match model.lora ({result.unexpected_keys[0]} ...)")


@contextlib.contextmanager
def reference_policy(lm: LatentLM, reference_adapter: str | None):
    """The KL reference in place of the policy LM: the adapters disabled (`reference_adapter` None), or the
    frozen reference adapter."""
    if reference_adapter is None:
        with lm.model.disable_adapter():
            yield
        return
    flags = [(p, p.requires_grad) for p in lm.model.parameters()]
    lm.model.set_adapter(reference_adapter)
    try:
        yield
    finally:
        lm.model.set_adapter("default")
        for p, flag in flags:  # set_adapter toggles requires_grad: put every flag back as it was
            p.requires_grad_(flag)
