"""Train the navigator with PPO on top of a COCONUT checkpoint.

The navigator (coconav/model/navigator.py) steers each continuous thought, decides when to stop
thinking and reads a memory of thoughts; it is trained with PPO (Schulman et al. 2017: clipped
ratio, value head, GAE advantages) on the reward of a correct final answer minus a cost per
thought. With K trajectories per question (ppo.num_trajectories, TRL's num_generations) the advantage
may instead be group-relative (ppo.advantage=group, GRPO); the fusion scorer and the K-selector train
beside PPO on detached features. The LM is frozen by default (ppo.train_lm also trains its LoRA
adapters, with a KL penalty to the frozen reference). The policy gradient flows through the
log-probabilities of the sampled actions, recomputed by replaying the stored actions through the model;
evaluation runs the same latent path that training uses. The math and the update live in coconav.rl
(ppo, update, policy, rollout, cold_start); this file holds the order of things.

    coconav train --config configs/demo_navigator.yaml                 # tiny model, 2 CPU cores
    coconav train --config configs/gsm8k_llama3_8b_navigator.yaml      # one 40 GB A100

Before the first update: (0) the halting head's optional supervised cold start (ppo.cold_start_questions).
Per update: (1) roll out a batch of training questions (sampled actions and answers); (2) rewards;
(3) one PPO update (coconav.rl.update.ppo_update: old log-probs by a no-grad replay, GAE or group
advantages, epochs over shuffled minibatches with early stop on approx KL); (4) write the trajectories to
the persistent memory; (5) log (group diagnostics: K, agreement, fused vs single accuracy), evaluate,
checkpoint. After the last: (6) the halting thresholds of the pass budgets, chosen on validation, and
(7) the final test evaluation.

Several processes (torchrun or accelerate launch, DDP through accelerate): ppo.rollout_batch is the
global batch, drawn with the shared seed; each rank rolls out its own slice of it with its own sampling
stream and replays it inside one DDP module (gradients averaged over the ranks), every rank writes the
whole global batch to its memory bank, and only rank 0 writes files:

    torchrun --standalone --nproc_per_node 2 -m coconav train --config configs/demo_navigator.yaml
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from coconav.common import DTYPE_NAMES, MetricLogger, print0, progress, seed_everything, set_threads, write_json_atomic
from coconav.config import RunConfig, save_config, to_dict
from coconav.data.splits import load_splits
from coconav.data.tasks import Splits
from coconav.decode.generate import navigator_prompts
from coconav.decode.groups import measure_thought_scale
from coconav.decode.settings import resolve_settings
from coconav.distributed import barrier, gather_global, is_writer, rank_and_world
from coconav.errors import ConfigError
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
from coconav.io.checkpoint import TrainState, latest_checkpoint, list_checkpoints, load_trainer_state, save_checkpoint
from coconav.io.hub import check_push, push, record_evaluation
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator
from coconav.rl.cold_start import fit_halting, thought_states
from coconav.rl.policy import (
    PolicyReplay,
    enable_lm_training,
    load_adapter_weights,
    make_accelerator,
    policy_optimizer,
    prepare_policy,
)
from coconav.rl.ppo import anneal
from coconav.rl.rewards import correctness, format_ok, step_rewards
from coconav.rl.rollout import group_diagnostics, roll_out, rollout_diagnostics
from coconav.rl.update import ppo_update

CURVE_KEYS = ("rollout/accuracy", "rollout/reward_mean", "rollout/mean_thoughts")  # the learning curve in results.json


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


# 1. setup and build -----------------------------------------------------------------------------


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
    if cfg.train.push_to_hub:  # a push that cannot happen at the end is refused before the run starts
        check_push(cfg.train.hub_model_id)
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
    base = latest_checkpoint(cfg.init_from)  # a missing COCONUT checkpoint too, before the run folder is written
    out_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
    logger = MetricLogger(
        out_dir, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project, to_dict(cfg), fresh=resume is None
    )
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
        lm, reference = enable_lm_training(lm, cfg.model, base)
        if ckpt is not None:  # the adapters trained so far, not fresh ones
            load_adapter_weights(lm, ckpt)
    navigator = Navigator(lm.hidden_size, cfg.navigator).to(lm.device)
    optimizer = policy_optimizer(navigator, lm, cfg.ppo.lr, cfg.ppo.lm_lr)
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
    # the replay wrapped in DDP (and the optimizer), after the optimizer and a resume are loaded
    policy, optimizer = prepare_policy(
        accelerator, PolicyReplay(lm, navigator, reference), optimizer, cfg.ppo.rollout_batch
    )
    run = NavRun(cfg, lm, navigator, optimizer, splits, logger, out_dir, base_thoughts, reference, accelerator, policy)
    return run, first


# 2. data and schedule: the questions and temperature of each update -------------------------------


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


def temperature_at(cfg: RunConfig, update: int) -> float:
    """The exploration temperature at `update`: navigator.temperature at the first update, temperature_final
    at the last, shaped by navigator.temperature_schedule (linear by default)."""
    nav = cfg.navigator
    return anneal(
        nav.temperature, nav.temperature_final, update / max(1, cfg.ppo.updates - 1), nav.temperature_schedule
    )


# 3. the loop -------------------------------------------------------------------------------------


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
        questions = [ex.question for ex in global_questions(run, first)]
        measure_thought_scale(run.lm, run.navigator, navigator_prompts(run.lm, questions))
    if ppo.cold_start_questions and first == 0:
        cold_start(run)  # 0.
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
        T, thoughts, tokens = cfg.navigator.max_thoughts + 1, traj.num_thoughts.cpu(), traj.new_tokens.cpu()
        rewards = step_rewards(
            correct, formatted, thoughts, T, ppo.thought_cost, ppo.format_coef, tokens, ppo.token_cost
        )
        # 3. one PPO update: old log-probs by replay, advantages, epochs over minibatches (coconav.rl.update)
        run.navigator.train()
        seed = cfg.seed * 100_003 + update  # the update's minibatch shuffles
        stats = ppo_update(run.policy, run.optimizer, run.accelerator, traj, rewards, ppo, temperature, seed, correct)
        groups = group_diagnostics(traj, correct, ppo.fusion, run.accelerator)  # per-rank groups, gathered inside
        # 4. memory: written after the update, so the replays above saw the bank the rollout saw; every
        # rank writes the whole global batch, so the banks stay identical
        keys = gather_global(run.accelerator, traj.question_keys)
        means = gather_global(run.accelerator, traj.thought_means)
        returns = gather_global(run.accelerator, rewards.sum(1).to(traj.question_keys.device))
        correct = gather_global(run.accelerator, correct)
        run.navigator.remember(keys, means, returns)
        # 5. log (rollout numbers over the global batch), evaluate, checkpoint
        metrics = {
            **rollout_diagnostics(traj, returns, correct, temperature, run.accelerator),
            "navigator/steer_norm": float(run.navigator.up.weight.detach().norm()),
            "navigator/action_std": float(run.navigator.log_std.detach().exp().mean()),
            "time/steps_per_second": float((traj.num_thoughts + 1).sum()) / max(rollout_seconds, 1e-9),
            "time/update_seconds": time.perf_counter() - start,
            **groups,
            **stats,
        }
        if run.navigator.bank is not None:
            metrics["memory/entries"] = run.navigator.bank.filled
        run.logger.log(metrics, update + 1)
        curve.append({"update": update + 1, **{k: metrics[k] for k in CURVE_KEYS}})
        bar.update(1)
        bar.set_postfix(
            acc=f"{metrics['rollout/accuracy']:.2f}",
            thoughts=f"{metrics['rollout/mean_thoughts']:.1f}",
            kl=f"{stats.get('ppo/approx_kl', 0):.3f}",
        )
        if (update + 1) % ppo.eval_every == 0 or update + 1 == ppo.updates:
            barrier(run.accelerator)
            if is_writer(run.accelerator):
                val = validate(run, update + 1)
                save_last(run, update + 1, {"split": "validation", **val.summary()})
            barrier(run.accelerator)
    bar.close()
    results = {"curve": curve, "base_thoughts": run.base_thoughts}
    if is_writer(run.accelerator):  # 6-7. thresholds for the pass budgets, then the test evaluation
        results = final_evaluation(run, curve, fit_pass_budgets(run))
        if cfg.train.push_to_hub:
            url = push(run.out_dir / "checkpoints" / "last", cfg.train.hub_model_id)
            print0(f"pushed {run.out_dir / 'checkpoints' / 'last'} to {url}")
    barrier(run.accelerator)
    run.logger.close()
    return results


# 0. the halting head's supervised cold start -------------------------------------------------------


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
    prompts = navigator_prompts(run.lm, [ex.question for ex in examples])
    return thought_states(run.lm, prompts, L, eval_cfg.batch_size), correct, passes


def cold_start(run: NavRun) -> dict[str, float]:
    """ppo.cold_start_questions > 0: teach the halting head each question's best thought count (coconav.rl.cold_start)
    on plain COCONUT thoughts, before PPO; logs the loss before and after and how often greedy halting hits the
    target."""
    states, correct, passes = cold_start_data(run)
    stats = fit_halting(run.navigator, states, correct, passes, run.cfg.ppo, run.cfg.navigator, run.cfg.seed)
    run.logger.log(stats, 0)
    print0(
        f"cold start on {len(states)} questions: halting loss {stats['cold_start/loss_before']:.3f} -> "
        f"{stats['cold_start/loss_after']:.3f}, greedy halting hits the target on {stats['cold_start/hit_rate']:.1%} "
        f"(targets: {stats['cold_start/target_thoughts']:.2f} thoughts)"
    )
    return stats


# 4. evaluation and checkpoints ---------------------------------------------------------------------


def save_last(run: NavRun, update: int, validation: dict | None = None) -> None:
    """The resumable checkpoint 'last' (atomic): LM adapters if any, navigator, optimizer, config, and the
    validation evaluation just made (its card shows it; none after fit_pass_budgets changed the thresholds)."""
    path = save_checkpoint(
        run.out_dir / "checkpoints" / "last",
        run.lm,
        TrainState(0, update, update),
        to_dict(run.cfg),
        run.optimizer,
        modules={"navigator": run.navigator},
        metrics={"base_thoughts": run.base_thoughts},
    )
    if validation is not None:
        record_evaluation(path, {"validation": validation})


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
    # the run's config, not the navigator's: its thresholds were chosen by fit_pass_budgets (pass_budget at K = 1,
    # multi_pass_budget at K > 1)
    settings = partial(resolve_settings, cfg.navigator)
    alone = partial(evaluate_navigator, run.lm, run.navigator, test, cfg.eval, seed=cfg.seed)
    rows = {
        "navigator": alone(settings()),
        "navigator_no_steering": alone(settings(steer=False)),
        "navigator_no_memory": alone(settings(memory=False)),
        "coconut_fixed": evaluate(run.lm, test, "coconut", run.base_thoughts, cfg.eval, seed=cfg.seed),
    }
    k = cfg.ppo.answer_trajectories
    if k > 1:  # K trajectories (those it was trained with, or ppo.eval_trajectories), fused, beside K = 1 above
        fused = partial(evaluate_multi, run.lm, run.navigator, test, cfg.eval, fusion=cfg.ppo.fusion, seed=cfg.seed)
        rows["navigator_multi"] = fused(settings(k))
        if cfg.navigator.steering:  # the same K trajectories with plain thoughts: what steering does as a sampler
            rows["navigator_multi_no_steering"] = fused(settings(k, steer=False))
    for name, res in rows.items():
        results[name] = res.summary()
    nav = rows["navigator"]
    results["navigator"]["spearman_steps_thoughts"] = spearman(
        [q.difficulty for q in nav.questions], [q.num_thoughts for q in nav.questions]
    )
    write_json_atomic(run.out_dir / "results.json", results)
    tested = {"test": {"split": "test", **results["navigator"]}}
    if "navigator_multi" in rows:
        tested[f"test, K = {k} ({cfg.ppo.fusion})"] = {
            "split": "test",
            "num_trajectories": k,
            "fusion": cfg.ppo.fusion,
            **results["navigator_multi"],
        }
    last = run.out_dir / "checkpoints" / "last"
    if last.is_dir():  # the card's test numbers (final_evaluation also runs on navigators never saved)
        record_evaluation(last, tested)
    for name, res in rows.items():
        print0(
            f"test {name}: accuracy {res.accuracy:.3f}, mean thoughts {res.mean_thoughts:.2f}, "
            f"forward passes {res.mean_forward_passes:.1f}"
        )
    print0(f"Spearman(steps, thoughts) = {results['navigator']['spearman_steps_thoughts']:.3f}")
    return results
