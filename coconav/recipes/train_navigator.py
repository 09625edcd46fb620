"""Train the navigator with PPO on top of a COCONUT checkpoint.

The navigator (coconav/model/navigator.py) steers each continuous thought, decides when to stop
thinking and reads a memory of thoughts; it is trained with PPO (Schulman et al. 2017: clipped
ratio, value head, GAE advantages) on the reward of a correct final answer minus a cost per
thought. With K trajectories per question (ppo.num_trajectories, TRL's num_generations) the advantage
may instead be group-relative (ppo.advantage=group, GRPO: a trajectory's return minus its question's
mean, scaled as ppo.scale_rewards says; the value head then still trains on the reward-to-go, for the
value-weighted fusion). The fusion scorer and the K-selector train beside PPO (ppo.scorer_coef,
ppo.selector_coef) on detached features, with their own gradient clip, so they never change the policy
or the value head. The LM is frozen by default (ppo.train_lm also trains its LoRA adapters, with a KL
penalty to the frozen reference). The policy gradient flows through the log-probabilities of the
sampled actions, recomputed by replaying the stored actions through the model; evaluation runs the
same latent path that training uses. With ppo.cold_start_questions the halting head first learns each
training question's best thought count from fixed-count answers (step 0 below, coconav.rl.halting).

    coconav train --config configs/demo_navigator.yaml                 # tiny model, 2 CPU cores
    coconav train --config configs/gsm8k_llama3_8b_navigator.yaml      # one 40 GB A100

Before the first update: (0) the halting head's optional supervised cold start. Per update: (1) roll
out a batch of training questions (sampled actions and answers); (2) rewards;
(3) old log-probs and values by a no-grad replay; (4) GAE or group advantages; (5) PPO epochs over
shuffled minibatches with early stop on approx KL (plus the scorer's and selector's losses); (6) write
good trajectories to the persistent memory; (7) log (group diagnostics: K, agreement, fused vs single
accuracy), evaluate, checkpoint.

Several processes (torchrun or accelerate launch, DDP through accelerate): ppo.rollout_batch is the
global batch, drawn with the shared seed; each rank rolls out its own slice of it with its own
sampling stream, the navigator (and the LM's adapters under ppo.train_lm) is replayed inside one
DDP module so gradients are averaged over the ranks, the KL early stop is decided on the ranks'
mean, every rank writes the whole global batch to its memory bank, and only rank 0 writes files:

    torchrun --standalone --nproc_per_node 2 -m coconav train --config configs/demo_navigator.yaml
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors import SafetensorError
from safetensors.torch import load_file

from coconav.checkpoint import TrainState, latest_checkpoint, list_checkpoints, load_trainer_state, save_checkpoint
from coconav.common import DTYPE_NAMES, MetricLogger, print0, progress, seed_everything, set_threads, write_json_atomic
from coconav.config import RunConfig, save_config, to_dict
from coconav.data.curriculum import encode_question
from coconav.data.splits import load_splits
from coconav.data.tasks import Splits
from coconav.decode.fusion import fuse
from coconav.decode.generate import fusion_scores, passes_per_question
from coconav.decode.groups import measure_thought_scale
from coconav.decode.trace import TraceController
from coconav.distributed import barrier, gather_global, is_writer, mean_over_ranks, rank_and_world
from coconav.errors import CheckpointError, ConfigError
from coconav.eval.evaluate import (
    EvalResult,
    choose_halt_threshold,
    evaluate,
    evaluate_multi,
    evaluate_navigator,
    fixed_count_results,
    spearman,
)
from coconav.inference import CoconavModel
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator
from coconav.rl.halting import halting_loss, halting_targets
from coconav.rl.ppo import (
    Advantages,
    anneal,
    compute_gae,
    explained_variance,
    group_advantages,
    normalize_advantages,
    ppo_loss,
    scorer_loss,
    selector_loss,
)
from coconav.rl.rewards import correctness, format_ok, step_rewards
from coconav.rl.rollout import Replay, Trajectories, replay, roll_out

REFERENCE_ADAPTER = "reference"


@dataclass
class NavRun:
    cfg: RunConfig
    lm: LatentLM
    navigator: Navigator
    optimizer: torch.optim.Optimizer
    splits: Splits
    logger: MetricLogger
    out_dir: Path
    base_thoughts: int  # the COCONUT checkpoint's fixed thought count (its last stage)
    reference_adapter: str | None = None  # train_lm on a LoRA checkpoint: the frozen copy of its adapter (KL reference)
    accelerator: Accelerator | None = None
    policy: torch.nn.Module | None = None  # PolicyReplay, wrapped by DDP when there are several ranks


class PolicyReplay(torch.nn.Module):
    """`replay` as one module call, so that DDP sees one forward per backward and averages the
    gradients of the navigator and of the LM's trainable adapters over the ranks."""

    def __init__(self, lm: LatentLM, navigator: Navigator) -> None:
        super().__init__()
        self.lm, self.navigator = lm, navigator

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


def prepare_distributed(run: NavRun, accelerator: Accelerator) -> NavRun:
    """Wrap the replay in DDP (and the optimizer), after the optimizer and a resume are loaded."""
    world = accelerator.num_processes
    if run.cfg.ppo.rollout_batch % world:
        raise ConfigError(
            f"ppo.rollout_batch ({run.cfg.ppo.rollout_batch}) must be a multiple of the number of processes ({world})"
        )
    run.accelerator = accelerator
    run.policy, run.optimizer = accelerator.prepare(PolicyReplay(run.lm, run.navigator), run.optimizer)
    return run


# 1-2. setup and build ---------------------------------------------------------------------------


def build(cfg: RunConfig, resume: str | None) -> tuple[NavRun, int]:
    """Load the COCONUT model (frozen), build the navigator and optimizer; returns (run, first update)."""
    set_threads(cfg.threads)
    accelerator = make_accelerator()
    seed_everything(cfg.seed)
    out_dir = Path(resume or cfg.out_dir)
    if resume is None and list_checkpoints(out_dir):
        raise ConfigError(
            f"{out_dir} already holds checkpoints: pass --resume {out_dir} to continue it, or choose another out_dir"
        )
    ckpt = latest_checkpoint(out_dir) if resume is not None else None
    # the data before anything is written: a bad data setting leaves no half-made run folder behind
    splits = load_splits(cfg.data, cfg.seed)
    budgets = [name for name in ("pass_budget", "multi_pass_budget") if getattr(cfg.navigator, name) is not None]
    if cfg.navigator.multi_pass_budget is not None and cfg.ppo.answer_trajectories == 1:
        raise ConfigError(
            "navigator.multi_pass_budget chooses the threshold of the multi-trajectory row, which this "
            "run does not have: set ppo.eval_trajectories (or num_trajectories) > 1, or use "
            "navigator.pass_budget"
        )
    if budgets and not splits.validation:
        raise ConfigError(
            f"navigator.{budgets[0]} chooses the halting threshold on the validation split, which is "
            "empty: set data.validation_size (or a validation file)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
    logger = MetricLogger(
        out_dir, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project, to_dict(cfg), fresh=resume is None
    )
    base = latest_checkpoint(cfg.init_from)
    # model.dtype when set, else the checkpoint's own dtype (a bf16 COCONUT model stays bf16)
    dtype = DTYPE_NAMES[cfg.model.dtype] if cfg.model.dtype is not None else None
    base_model = CoconavModel.from_pretrained(
        base, device=accelerator.device, dtype=dtype, compile=cfg.model.compile, kv_cache=cfg.model.kv_cache
    )
    if base_model.navigator is not None:
        raise ConfigError(f"init_from={base} already holds a navigator: point it at the COCONUT checkpoint")
    lm = base_model.lm.eval()  # eval mode throughout: rollouts and replays run without dropout
    lm.requires_grad_(False)
    reference = None
    if cfg.ppo.train_lm:
        lm, reference = enable_lm_training(lm, cfg, base)
        if ckpt is not None:  # the adapters trained so far, not fresh ones
            load_adapter_weights(lm, ckpt)
    navigator = Navigator(lm.hidden_size, cfg.navigator).to(lm.device)
    groups = [{"params": [p for p in navigator.parameters() if p.requires_grad], "lr": cfg.ppo.lr}]
    lm_params = [p for p in lm.parameters() if p.requires_grad]
    if lm_params:
        groups.append({"params": lm_params, "lr": cfg.ppo.lm_lr})
    optimizer = torch.optim.Adam(groups, eps=1e-5)
    first = 0
    if ckpt is not None:
        state = load_trainer_state(ckpt, optimizer, modules={"navigator": navigator})
        first = state.global_step
        print0(f"resuming from {ckpt} at update {first}")
    base_thoughts = base_model.default_thoughts()
    print0(
        f"coconav navigator: base {base} ({base_thoughts} thoughts), budget {cfg.navigator.max_thoughts}, "
        f"{sum(p.numel() for p in navigator.parameters()) / 1e3:.0f}k navigator parameters, out_dir={out_dir}"
    )
    run = NavRun(cfg, lm, navigator, optimizer, splits, logger, out_dir, base_thoughts, reference)
    return prepare_distributed(run, accelerator), first


def enable_lm_training(lm: LatentLM, cfg: RunConfig, base: Path) -> tuple[LatentLM, str | None]:
    """Make the LM's LoRA adapters trainable for the policy gradient; returns (lm, reference adapter name).

    A full COCONUT model gets fresh adapters (cfg.model.lora; zero update, so the policy starts as the
    model) and its reference is the model with the adapters disabled. A LoRA COCONUT checkpoint keeps
    training its own adapter ('default', latent-token rows included); a frozen copy loaded as adapter
    'reference' is the KL reference, so the reference is the COCONUT policy as loaded, never the bare base.
    """
    from coconav.model.build import apply_lora

    if lm.model is not lm.causal_lm:  # already a PEFT model: the COCONUT adapter itself
        lm.model.load_adapter(str(base), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        lm.model.set_adapter("default")  # active, and trainable (PEFT's set_adapter), the reference frozen
        return lm.eval(), REFERENCE_ADAPTER
    if cfg.model.lora is None:
        raise ConfigError("ppo.train_lm=true needs model.lora settings (the LM is trained through LoRA adapters)")
    model = apply_lora(lm.model, cfg.model, [])
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
def reference_policy(run: NavRun):
    """The KL reference in place of the policy LM: the adapters disabled, or the frozen reference adapter."""
    if run.reference_adapter is None:
        with run.lm.model.disable_adapter():
            yield
        return
    flags = [(p, p.requires_grad) for p in run.lm.model.parameters()]
    run.lm.model.set_adapter(run.reference_adapter)
    try:
        yield
    finally:
        run.lm.model.set_adapter("default")
        for p, flag in flags:  # set_adapter toggles requires_grad: put every flag back as it was
            p.requires_grad_(flag)


def temperature_at(cfg: RunConfig, update: int) -> float:
    """The exploration temperature at `update`: navigator.temperature at the first update, temperature_final
    at the last, shaped by navigator.temperature_schedule (linear by default)."""
    nav = cfg.navigator
    return anneal(
        nav.temperature, nav.temperature_final, update / max(1, cfg.ppo.updates - 1), nav.temperature_schedule
    )


def head_parameters(navigator: Navigator) -> list[torch.nn.Parameter]:
    """The fusion scorer's and K-selector's parameters (trained by their own losses, clipped apart)."""
    return [*navigator.scorer_head.parameters(), *navigator.selector.parameters()]


def advantages_for(
    run: NavRun, traj: Trajectories, rewards: torch.Tensor, old_values: torch.Tensor, valid: torch.Tensor
) -> Advantages:
    """GAE (ppo.advantage=gae), or group-relative advantages with the value head's targets the reward-to-go
    (GAE with lambda 1). scale_rewards=batch divides by the std over the global batch (all ranks)."""
    ppo = run.cfg.ppo
    if ppo.advantage == "gae":
        return compute_gae(rewards, old_values, valid, ppo.gamma, ppo.lam)
    returns = rewards.sum(1)
    scale = "none" if ppo.scale_rewards == "batch" else ppo.scale_rewards
    adv = group_advantages(returns, traj.group.to(returns.device), valid, scale).advantages
    if ppo.scale_rewards == "batch":
        adv = adv / (gather_global(run.accelerator, returns.float()).std(unbiased=False) + 1e-4)
    return Advantages(advantages=adv, returns=compute_gae(rewards, old_values, valid, ppo.gamma, 1.0).returns)


# 3-5. one PPO update ----------------------------------------------------------------------------


def reference_logprobs(run: NavRun, traj: Trajectories, mb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of the sampled answers under the frozen reference (train_lm only). Shape: [b].

    Computed before the policy's replay of the minibatch: switching adapters must not happen between
    a forward pass and its backward."""
    with torch.no_grad(), reference_policy(run):
        return replay(run.lm, run.navigator, traj, mb, temperature).answer_logprobs


def reference_kl(ref_logprobs: torch.Tensor, answer_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(policy || reference) on the sampled answers."""
    log_ratio = ref_logprobs - answer_logprobs
    return (log_ratio.exp() - log_ratio - 1).mean()


def ppo_update(
    run: NavRun,
    traj: Trajectories,
    rewards: torch.Tensor,
    temperature: float,
    update: int,
    correct: torch.Tensor | None = None,
) -> dict:
    """Old log-probs by replay, advantages (GAE or group), then epochs of clipped updates over shuffled minibatches
    (with the fusion scorer's and K-selector's losses when their coefficients are > 0)."""
    cfg, ppo = run.cfg, run.cfg.ppo
    B, device = len(traj), run.lm.device
    run.lm.eval()  # no dropout: replays must reproduce the rollout's distribution (first ratios exactly 1)
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + update)
    minibatches = list(torch.randperm(B, generator=g).chunk(ppo.num_minibatches))
    # 3. old log-probs and values, on the first epoch's minibatches (so its first ratio is exactly 1)
    T = cfg.navigator.max_thoughts + 1
    old_logprobs, old_values = torch.zeros(B, T, device=device), torch.zeros(B, T, device=device)
    valid = torch.zeros(B, T, dtype=torch.bool, device=device)
    with torch.no_grad():
        for mb in minibatches:
            rep = replay(run.lm, run.navigator, traj, mb, temperature, ppo.answer_in_policy)
            old_logprobs[mb.to(device)], old_values[mb.to(device)], valid[mb.to(device)] = (
                rep.logprobs,
                rep.values,
                rep.masks.valid,
            )
    # 4. advantages
    adv = advantages_for(run, traj, rewards.to(device), old_values, valid)
    correct = (correctness(traj.texts, traj.examples) if correct is None else correct).to(device)  # [B], 0/1
    group = traj.group.to(device)
    train_scorer, train_selector = ppo.scorer_coef > 0, ppo.selector_coef > 0
    stats: dict[str, list[float]] = {
        k: []
        for k in (
            "policy_loss",
            "value_loss",
            "entropy",
            "approx_kl",
            "clipfrac",
            "ratio_first",
            "kl_ref",
            "scorer_loss",
            "selector_loss",
        )
    }
    heads = {id(p) for p in head_parameters(run.navigator)}
    # the policy's (and value head's) gradient clip ignores the heads: their losses cannot rescale its step
    params = [p for g_ in run.optimizer.param_groups for p in g_["params"] if id(p) not in heads]
    head_params = [p for g_ in run.optimizer.param_groups for p in g_["params"] if id(p) in heads]
    epochs_done = 0
    # 5. PPO epochs
    for epoch in range(ppo.ppo_epochs):
        if epoch > 0:
            minibatches = list(torch.randperm(B, generator=g).chunk(ppo.num_minibatches))
        stop = False
        for i, mb in enumerate(minibatches):
            mbd = mb.to(device)
            ref = reference_logprobs(run, traj, mb, temperature) if ppo.train_lm and ppo.beta > 0 else None
            rep = run.policy(traj, mb, temperature, ppo.answer_in_policy, train_scorer, train_selector)
            advantages = adv.advantages[mbd]
            if ppo.norm_adv and ppo.advantage == "gae":
                advantages = normalize_advantages(advantages, valid[mbd])
            out = ppo_loss(
                rep.logprobs,
                old_logprobs[mbd],
                advantages,
                rep.values,
                old_values[mbd],
                adv.returns[mbd],
                rep.entropy,
                valid[mbd],
                ppo.epsilon,
                ppo.vf_coef,
                ppo.ent_coef,
                ppo.clip_value,
            )
            loss = out.loss
            if ref is not None:
                kl = reference_kl(ref, rep.answer_logprobs)
                loss = loss + ppo.beta * kl
                stats["kl_ref"].append(float(kl.detach()))
            if rep.final_scores is not None:
                s_loss = scorer_loss(rep.final_scores, correct[mbd])
                stats["scorer_loss"].append(float(s_loss.detach()))
                if train_scorer:
                    loss = loss + ppo.scorer_coef * s_loss
            if rep.success_logits is not None:
                k_loss = selector_loss(rep.success_logits, correct[mbd], group[mbd])
                stats["selector_loss"].append(float(k_loss.detach()))
                if train_selector:
                    loss = loss + ppo.selector_coef * k_loss
            run.optimizer.zero_grad(set_to_none=True)
            run.accelerator.backward(loss)  # DDP averages the gradients over the ranks here
            run.accelerator.clip_grad_norm_(params, ppo.max_grad_norm)
            if head_params and (train_scorer or train_selector):
                run.accelerator.clip_grad_norm_(head_params, ppo.max_grad_norm)
            run.optimizer.step()
            if epoch == 0 and i == 0:
                stats["ratio_first"].append(float(out.ratio_mean))
            for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
                stats[key].append(float(getattr(out, key)))
            if (
                ppo.target_kl is not None and mean_over_ranks(run.accelerator, out.approx_kl) > ppo.target_kl
            ):  # all ranks stop together
                stop = True
                break
        epochs_done = epoch + 1
        if stop:
            break
    summary = {f"ppo/{k}": sum(v) / len(v) for k, v in stats.items() if v}
    for key in ("ppo/scorer_loss", "ppo/selector_loss"):  # each rank saw its own slice: the global batch's mean
        if key in summary:
            summary[key] = mean_over_ranks(run.accelerator, torch.tensor(summary[key]))
    summary["ppo/explained_variance"] = explained_variance(old_values, adv.returns, valid)
    summary["ppo/epochs"] = epochs_done
    return summary


# 6-7. the loop ------------------------------------------------------------------------------------


def global_questions(run: NavRun, update: int) -> list:
    """The update's global batch of training questions (drawn with the shared seed: the same on every rank)."""
    rng = random.Random(f"{run.cfg.seed}-rollout-{update}")
    return [run.splits.train[rng.randrange(len(run.splits.train))] for _ in range(run.cfg.ppo.rollout_batch)]


def sample_questions(run: NavRun, update: int) -> list:
    """This rank's slice of the update's global batch (drawn with the shared seed)."""
    batch = global_questions(run, update)
    rank, world = rank_and_world(run.accelerator)
    per = len(batch) // world
    return batch[rank * per : (rank + 1) * per]


def rollout_seed(run: NavRun, update: int) -> int:
    """The sampling stream of this rank's rollout (one process: the update's seed)."""
    rank, world = rank_and_world(run.accelerator)
    return (run.cfg.seed * 1_000_003 + update) * world + rank


def group_diagnostics(run: NavRun, traj: Trajectories, correct: torch.Tensor) -> dict[str, float]:
    """Per-question rollout diagnostics over the global batch: K (mean, share of each value), agreement with the
    fused answer, and the accuracy of the fused answer (ppo.fusion), of trajectory 0 and of any trajectory."""
    correct = correct.float().cpu()
    group = traj.group.cpu()
    Q = int(group.max()) + 1 if len(group) else 0
    fused = fuse(
        traj.texts,
        fusion_scores(traj, run.cfg.ppo.fusion),
        [ex.answer_type for ex in traj.examples],
        run.cfg.ppo.fusion,
        group,
    )
    first = traj.trajectory.cpu() == 0 if traj.trajectory is not None else torch.ones(len(group), dtype=torch.bool)
    per_question = torch.stack(
        [
            traj.counts.cpu().float(),  # K
            fused.agreement.float(),  # share agreeing with the fused answer
            correct[fused.winner],  # fused answer right
            torch.zeros(Q).index_add_(0, group, correct).gt(0).float(),  # any trajectory right
            correct[first],  # trajectory 0 right
        ],
        dim=1,
    )
    k, agreement, fused_right, any_right, first_right = gather_global(run.accelerator, per_question).unbind(1)
    out = {
        "rollout/k_mean": float(k.mean()),
        "rollout/agreement": float(agreement.mean()),
        "rollout/fused_accuracy": float(fused_right.mean()),
        "rollout/best_single_accuracy": float(any_right.mean()),
        "rollout/single_accuracy": float(first_right.mean()),
    }
    for value in sorted({int(v) for v in k.tolist()}):
        out[f"rollout/k_share/{value}"] = float((k == value).float().mean())
    return out


def train(cfg: RunConfig, resume: str | None = None) -> dict:
    """PPO updates, periodic validation, checkpoints, then the final test evaluation."""
    run, first = build(cfg, resume)
    ppo = cfg.ppo
    curve = []
    bar = progress(total=ppo.updates, desc="ppo", enabled=cfg.log.progress)
    bar.update(first)
    if run.navigator.needs_thought_scale and first < ppo.updates:
        # steer_scale rms: measured on the first update's global batch, so that every rank holds the same scale
        # (one process: the questions its first rollout would have measured it on)
        questions = global_questions(run, first)
        measure_thought_scale(
            run.lm,
            run.navigator,
            [encode_question(run.lm.tokenizer, ex.question) + [run.lm.special.bot] for ex in questions],
        )
    if ppo.cold_start_questions and first == 0:
        cold_start(run)
    for update in range(first, ppo.updates):
        start = time.perf_counter()
        temperature = temperature_at(cfg, update)
        # 1. roll out
        run.navigator.eval()
        run.lm.eval()
        gen = torch.Generator(device=run.lm.device).manual_seed(rollout_seed(run, update))
        traj = roll_out(
            run.lm,
            run.navigator,
            sample_questions(run, update),
            num_trajectories=ppo.num_trajectories,
            sample=True,
            temperature=temperature,
            max_new_tokens=cfg.eval.max_new_tokens,
            generator=gen,
        )
        rollout_seconds = time.perf_counter() - start
        # 2. rewards
        correct, formatted = correctness(traj.texts, traj.examples), format_ok(traj.texts)
        T = cfg.navigator.max_thoughts + 1
        rewards = step_rewards(
            correct,
            formatted,
            traj.num_thoughts.cpu(),
            T,
            ppo.thought_cost,
            ppo.format_coef,
            traj.new_tokens.cpu(),
            ppo.token_cost,
        )
        returns = rewards.sum(1)
        # 3-5. PPO
        run.navigator.train()
        stats = ppo_update(run, traj, rewards, temperature, update, correct)
        groups = group_diagnostics(run, traj, correct)  # before `correct` is gathered: per-rank groups
        # 6. memory: written after the update, so the replays above saw the bank the rollout saw; every
        # rank writes the whole global batch, so the banks stay identical
        keys, means = (
            gather_global(run.accelerator, traj.question_keys),
            gather_global(run.accelerator, traj.thought_means),
        )
        returns, correct = (
            gather_global(run.accelerator, returns.to(traj.question_keys.device)),
            gather_global(run.accelerator, correct),
        )
        run.navigator.remember(keys, means, returns)
        # 7. log (rollout numbers over the global batch)
        num_thoughts = gather_global(run.accelerator, traj.num_thoughts)
        # per question, the K trajectories sharing one prefill (the compute rule of passes_per_question)
        work = traj.num_thoughts + traj.new_tokens.to(traj.num_thoughts.device)
        local = passes_per_question(work, traj.group, int(traj.group.max()) + 1 if len(traj) else 0)
        passes = float(gather_global(run.accelerator, local.to(traj.num_thoughts.device)).mean())
        seconds = time.perf_counter() - start
        metrics = {
            "rollout/accuracy": float(correct.mean()),
            "rollout/reward_mean": float(returns.mean()),
            "rollout/reward_std": float(returns.std()) if len(returns) > 1 else 0.0,
            "rollout/mean_thoughts": float(num_thoughts.float().mean()),
            "rollout/mean_new_tokens": float(gather_global(run.accelerator, traj.new_tokens).float().mean()),
            "rollout/forward_passes": passes,
            "rollout/temperature": temperature,
            "rollout/halt_prob": float(traj.halt_probs[:, 0].mean()),
            "navigator/steer_norm": float(run.navigator.up.weight.detach().norm()),
            "navigator/action_std": float(run.navigator.log_std.detach().exp().mean()),
            "time/steps_per_second": float((traj.num_thoughts + 1).sum()) / max(rollout_seconds, 1e-9),
            "time/update_seconds": seconds,
            **groups,
            **stats,
        }
        if run.navigator.bank is not None:
            metrics["memory/entries"] = run.navigator.bank.filled
        run.logger.log(metrics, update + 1)
        curve.append(
            {
                "update": update + 1,
                **{k: metrics[k] for k in ("rollout/accuracy", "rollout/reward_mean", "rollout/mean_thoughts")},
            }
        )
        bar.update(1)
        bar.set_postfix(
            acc=f"{metrics['rollout/accuracy']:.2f}",
            thoughts=f"{metrics['rollout/mean_thoughts']:.1f}",
            kl=f"{stats.get('ppo/approx_kl', 0):.3f}",
        )
        if (update + 1) % ppo.eval_every == 0 or update + 1 == ppo.updates:
            barrier(run.accelerator)
            if is_writer(run.accelerator):
                validate(run, update + 1)
                save_last(run, update + 1)
            barrier(run.accelerator)
    bar.close()
    results = {"curve": curve, "base_thoughts": run.base_thoughts}
    if is_writer(run.accelerator):
        results = final_evaluation(run, curve, fit_pass_budgets(run))
    barrier(run.accelerator)
    run.logger.close()
    return results


# 0. the halting head's supervised cold start ------------------------------------------------------------------


def cold_start_data(run: NavRun) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ppo.cold_start_questions training questions: the plain COCONUT states h_0..h_L [N, L+1, D] and, per
    fixed thought count k = 0..L, whether the answer is right and its forward passes ([N, L+1] each)."""
    cfg, nav = run.cfg, run.cfg.navigator
    rng = random.Random(cfg.seed * 1_000_003 + 17)
    examples = rng.sample(run.splits.train, min(cfg.ppo.cold_start_questions, len(run.splits.train)))
    L, eval_cfg = nav.max_thoughts, dataclasses.replace(cfg.eval, max_questions=0)
    results = fixed_count_results(run.lm, examples, list(range(L + 1)), eval_cfg, seed=cfg.seed)
    correct = torch.tensor([[q.correct for q in results[k].questions] for k in range(L + 1)]).T  # [N, L+1]
    passes = torch.tensor([[q.forward_passes for q in results[k].questions] for k in range(L + 1)], dtype=torch.float).T
    prompts = [encode_question(run.lm.tokenizer, ex.question) + [run.lm.special.bot] for ex in examples]
    states = []
    with torch.no_grad():
        for lo in range(0, len(prompts), eval_cfg.batch_size):
            batch = prompts[lo : lo + eval_cfg.batch_size]
            tracer = TraceController(None, torch.full((len(batch),), L))
            run.lm.generate(batch, num_thoughts=0, controller=tracer, max_thoughts=L, max_new_tokens=1)
            states.append(tracer.states().cpu())
    return torch.cat(states), correct, passes


def cold_start(run: NavRun) -> dict[str, float]:
    """ppo.cold_start_questions > 0: teach the halting head each question's best thought count (coconav.rl.halting)
    on plain COCONUT thoughts, before PPO; logs the loss before and after and how often greedy halting hits the
    target."""
    cfg, ppo, nav = run.cfg, run.cfg.ppo, run.cfg.navigator
    states, correct, passes = cold_start_data(run)
    targets = halting_targets(correct, passes, ppo.thought_cost, nav.min_thoughts)
    dev, navigator = run.lm.device, run.navigator
    optimizer = torch.optim.Adam(navigator.parameters(), lr=ppo.cold_start_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = max(1, len(states) // max(1, ppo.num_minibatches))

    def loss_on(idx: torch.Tensor) -> torch.Tensor:
        s = states[idx].to(dev)
        out = navigator(s, s[:, 0])
        return halting_loss(out.halt_logits, targets[idx], nav.min_thoughts, nav.max_thoughts)

    navigator.train()
    with torch.no_grad():
        before = float(loss_on(torch.arange(len(states))))
    for _ in range(ppo.cold_start_epochs):
        for idx in torch.randperm(len(states), generator=gen).split(batch):
            loss = loss_on(idx)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(navigator.parameters(), ppo.max_grad_norm)
            optimizer.step()
    navigator.eval()
    with torch.no_grad():
        everything = torch.arange(len(states))
        after = float(loss_on(everything))
        halts = navigator(states.to(dev), states[:, 0].to(dev)).halt_logits.cpu() > 0  # [N, L+1]
    halts[:, : nav.min_thoughts] = False
    halts[:, nav.max_thoughts] = True
    greedy = halts.float().argmax(1)  # the first step where greedy halting stops
    stats = {
        "cold_start/loss_before": before,
        "cold_start/loss_after": after,
        "cold_start/hit_rate": float((greedy == targets).float().mean()),
        "cold_start/target_thoughts": float(targets.float().mean()),
        "cold_start/oracle_accuracy": float(correct.gather(1, targets[:, None]).float().mean()),
    }
    run.logger.log(stats, 0)
    print0(
        f"cold start on {len(states)} questions: halting loss {before:.3f} -> {after:.3f}, greedy halting hits the "
        f"target on {stats['cold_start/hit_rate']:.1%} (targets: {stats['cold_start/target_thoughts']:.2f} thoughts)"
    )
    return stats


def save_last(run: NavRun, update: int) -> None:
    """The resumable checkpoint 'last' (atomic): LM adapters if any, navigator, optimizer, config."""
    save_checkpoint(
        run.out_dir / "checkpoints" / "last",
        run.lm,
        TrainState(0, update, update),
        to_dict(run.cfg),
        run.optimizer,
        modules={"navigator": run.navigator},
        metrics={"base_thoughts": run.base_thoughts},
    )


def fit_pass_budgets(run: NavRun) -> dict[str, dict]:
    """Choose the halting thresholds on the validation split, each at the K it is used with: navigator.pass_budget
    -> halt_threshold of the K = 1 rows (the greedy navigator alone); navigator.multi_pass_budget ->
    multi_halt_threshold of the multi row (K = ppo.eval_trajectories > 1, fused by ppo.fusion: trajectories that read
    each other halt differently than one alone). Puts them in the run's config (a new config object: the
    navigator's own is never mutated) and saves them in the last checkpoint's config (so inference and `coconav
    eval` use them); returns the choices for results.json by budget name (none: {})."""
    nav, ppo = run.cfg.navigator, run.cfg.ppo
    budgets = {
        "pass_budget": (nav.pass_budget, 1, "halt_threshold"),
        "multi_pass_budget": (nav.multi_pass_budget, ppo.answer_trajectories, "multi_halt_threshold"),
    }
    choices, thresholds = {}, {}
    for name, (budget, k, key) in budgets.items():
        if budget is None:
            continue
        choice = choose_halt_threshold(
            run.lm,
            run.navigator,
            run.splits.validation,
            run.cfg.eval,
            budget,
            nav.halt_threshold_grid,
            seed=run.cfg.seed,
            num_trajectories=k,
            fusion=ppo.fusion,
            refine=nav.halt_threshold_refine,
        )
        thresholds[key] = choice.threshold
        choices[name] = {**asdict(choice), "num_trajectories": k}
        chosen = next(t for t in choice.tried if t["threshold"] == choice.threshold)
        print0(
            f"{name} {budget:g} (K = {k}): halt threshold {choice.threshold:g}, validation accuracy "
            f"{chosen['accuracy']:.3f} at {chosen['mean_forward_passes']:.1f} forward passes"
            + ("" if choice.fits else " (no threshold fits the budget: the fewest passes)")
        )
    if thresholds:
        run.cfg = dataclasses.replace(run.cfg, navigator=dataclasses.replace(nav, **thresholds))
        save_last(run, ppo.updates)
    return choices


def validate(run: NavRun, update: int) -> EvalResult:
    result = evaluate_navigator(run.lm, run.navigator, run.splits.validation, run.cfg.eval, seed=run.cfg.seed)
    run.logger.log(
        {
            "eval/accuracy": result.accuracy,
            "eval/mean_thoughts": result.mean_thoughts,
            "eval/forward_passes": result.mean_forward_passes,
        },
        update,
    )
    print0(
        f"update {update}: validation accuracy {result.accuracy:.3f}, mean thoughts {result.mean_thoughts:.2f}, "
        f"forward passes {result.mean_forward_passes:.1f}"
    )
    return result


def final_evaluation(run: NavRun, curve: list[dict], budgets: dict[str, dict] | None = None) -> dict:
    """Test accuracy of the navigator at K = 1, of its ablations (steering off; memory off: episodic, persistent and
    group read), of fixed-count COCONUT and, when K = ppo.eval_trajectories (default ppo.num_trajectories) is > 1, of
    K trajectories fused by ppo.fusion (navigator_multi, at navigator.multi_halt_threshold when set), and with
    steering those K trajectories again with steering off (navigator_multi_no_steering: halting, memory and fusion
    as trained, plain thoughts).

    The K = 1 rows run one lone trajectory per question (index 0): its group read sees no peers (the null slot
    only). A navigator trained with K > 1 and group memory always had peers in training, so these rows measure it
    used alone; trajectory 0 of navigator_multi (greedy, reading its peers) is its first_trajectory_accuracy.
    `budgets`: the thresholds chosen by fit_pass_budgets, recorded as they are (pass_budget, multi_pass_budget)."""
    cfg, test = run.cfg, run.splits.test
    results: dict = {"curve": curve, "base_thoughts": run.base_thoughts, **(budgets or {})}
    if not test:
        return results
    halt = cfg.navigator.halt_threshold_at(1)  # the K = 1 rows' (chosen for navigator.pass_budget when it has one)
    rows = {
        "navigator": evaluate_navigator(run.lm, run.navigator, test, cfg.eval, seed=cfg.seed, halt_threshold=halt),
        "navigator_no_steering": evaluate_navigator(
            run.lm, run.navigator, test, cfg.eval, steer=False, seed=cfg.seed, halt_threshold=halt
        ),
        "navigator_no_memory": evaluate_navigator(
            run.lm, run.navigator, test, cfg.eval, memory=False, seed=cfg.seed, halt_threshold=halt
        ),
        "coconut_fixed": evaluate(run.lm, test, "coconut", run.base_thoughts, cfg.eval, seed=cfg.seed),
    }
    k = cfg.ppo.answer_trajectories
    if k > 1:  # K trajectories (those it was trained with, or ppo.eval_trajectories), fused, beside K = 1 above
        halt_k = cfg.navigator.halt_threshold_at(k)  # chosen for navigator.multi_pass_budget when set

        def fused(steer: bool) -> EvalResult:
            return evaluate_multi(
                run.lm,
                run.navigator,
                test,
                cfg.eval,
                k,
                cfg.ppo.fusion,
                seed=cfg.seed,
                steer=steer,
                halt_threshold=halt_k,
            )

        rows["navigator_multi"] = fused(steer=True)
        if cfg.navigator.steering:  # the same K trajectories with plain thoughts: what steering does as a sampler
            rows["navigator_multi_no_steering"] = fused(steer=False)
    for name, res in rows.items():
        results[name] = res.summary()
    nav = rows["navigator"]
    results["navigator"]["spearman_steps_thoughts"] = spearman(
        [q.difficulty for q in nav.questions], [q.num_thoughts for q in nav.questions]
    )
    write_json_atomic(run.out_dir / "results.json", results)
    for name, res in rows.items():
        print0(
            f"test {name}: accuracy {res.accuracy:.3f}, mean thoughts {res.mean_thoughts:.2f}, "
            f"forward passes {res.mean_forward_passes:.1f}"
        )
    print0(f"Spearman(steps, thoughts) = {results['navigator']['spearman_steps_thoughts']:.3f}")
    return results
