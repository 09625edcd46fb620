"""Train a latent LM with the COCONUT curriculum, or one of its baselines (cot, no_cot, pause).

Paper: Hao et al., "Training Large Language Models to Reason in a Continuous Latent Space"
(arXiv 2412.06769), §3: stage 0 is chain-of-thought training; stage k replaces the first k steps
with k x c continuous thoughts; the last stage drops every language step. Differences from the
paper's code: the number of thoughts at evaluation is the last stage's fixed count, never the test
example's own number of steps; stages may be measured in optimizer steps (built-in tasks) or in
epochs (data files); an optional thought loss (curriculum.thought_loss_weight) is off by default.

    coconav train --config configs/demo.yaml                       # a tiny model on 2 CPU cores
    accelerate launch --config_file configs/accelerate/ddp.yaml -m coconav train --config configs/gsm8k_gpt2_coconut.yaml

Several processes run through torchrun or accelerate launch; each rank takes its share of every
global batch (train.batch_size per rank). By default the ranks are data parallel (DDP); with
train.fsdp=true the LM is sharded with torch FSDP2 (coconav/distributed.py), and checkpoints and
evaluations gather the full weights on every rank for rank 0 to write and evaluate:

    torchrun --standalone --nproc_per_node 2 -m coconav train --config configs/demo.yaml train.fsdp=true

At the end the last stage's checkpoint gets its test accuracy in its model card, and with train.push_to_hub=true
it is pushed to train.hub_model_id (rank 0; a push that could not happen is refused before the run starts).

Padding: a micro-batch computes rows x (longest question + longest rest) columns, because every <bot>
shares one column. train.length_pool=k draws length-grouped batches (coconav/data/grouping.py); the
metrics log real tokens (train/tokens), computed columns (train/columns) and train/padded_fraction.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from coconav.common import DTYPE_NAMES, MetricLogger, print0, progress, seed_everything, set_threads, write_json_atomic
from coconav.config import RunConfig, save_config, to_dict
from coconav.data.curriculum import Sequence, TokenizedExample, build_sequence, collate, tokenize_examples
from coconav.data.grouping import Layout, arrange, grouped_batch_indices, predicted_layout, sequence_layout
from coconav.data.splits import batch_indices, data_vocabulary, load_splits
from coconav.data.tasks import Splits, get_task
from coconav.data.tokenizer import build_word_tokenizer
from coconav.distributed import (
    OptimizerState,
    check_engine,
    gather_model_state,
    gather_optimizer_state,
    is_sharded,
    load_optimizer_state,
    shard_lm,
    sum_over_ranks,
    unsharded_lm,
)
from coconav.errors import ConfigError
from coconav.eval.evaluate import EvalResult, evaluate
from coconav.io.checkpoint import (
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    read_optimizer_state,
    save_checkpoint,
)
from coconav.io.hub import check_push, push, record_evaluation
from coconav.model.build import SCRATCH, build_latent_lm
from coconav.model.latent_lm import LatentLM


@dataclass
class Run:
    """Everything the loop needs, built once."""

    cfg: RunConfig
    accelerator: Accelerator
    lm: LatentLM
    model: torch.nn.Module  # lm, possibly wrapped by DDP/FSDP
    optimizer: torch.optim.Optimizer
    splits: Splits
    train_examples: list[TokenizedExample]
    logger: MetricLogger
    out_dir: Path
    layouts: dict[int, list[Layout]] = field(default_factory=dict)  # stage -> predicted layout of each example


# 1. setup -------------------------------------------------------------------------------------


def check_run_folder(out_dir: Path, resume: bool) -> None:
    """Never resume silently, never overwrite silently."""
    if not resume and list_checkpoints(out_dir):
        raise ConfigError(
            f"{out_dir} already holds checkpoints: pass --resume {out_dir} to continue it, or choose another out_dir"
        )


# 2. build -------------------------------------------------------------------------------------


def build_model(cfg: RunConfig, splits: Splits, resume_from: Path | None) -> LatentLM:
    """The latent LM: from a checkpoint to resume, from `init_from`, or freshly built."""
    if resume_from is not None or cfg.init_from:  # trainable: a LoRA checkpoint's adapters and latent-token rows
        dtype = DTYPE_NAMES[cfg.model.dtype] if cfg.model.dtype is not None else None  # None: the checkpoint's
        lm = LatentLM.from_pretrained(
            resume_from or cfg.init_from,
            dtype=dtype,
            trainable=True,
            thought_norm=cfg.model.thought_norm,
            autocast=cfg.model.autocast,
        )
        if cfg.model.gradient_checkpointing:
            lm.gradient_checkpointing_enable()
        return lm.configure_generation(cfg.model.kv_cache, cfg.model.compile)
    tokenizer = None
    if cfg.model.name_or_path in SCRATCH:
        if cfg.data.task != "files":
            tokenizer = build_word_tokenizer(get_task(cfg.data.task).vocabulary())
        else:
            tokenizer = build_word_tokenizer(data_vocabulary(splits.train + splits.validation + splits.test))
    return build_latent_lm(cfg.model, tokenizer)


def make_optimizer(cfg: RunConfig, lm: LatentLM) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases, norms and embeddings."""
    decay, no_decay = [], []
    for name, param in lm.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "embed" in name or "wte" in name or "wpe" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=tuple(cfg.train.betas))


def stage_length(cfg: RunConfig, stage: int, num_train: int, world: int) -> int:
    """Optimizer steps in `stage`."""
    t = cfg.train
    per_epoch = num_train / (t.batch_size * world)
    if stage == cfg.curriculum.final_stage and t.final_stage_epochs is not None:
        return max(1, math.ceil(t.final_stage_epochs * per_epoch))
    if stage == cfg.curriculum.final_stage and t.final_stage_steps is not None:
        return t.final_stage_steps
    if stage == 0 and t.first_stage_epochs is not None:
        return max(1, math.ceil(t.first_stage_epochs * per_epoch))
    if stage == 0 and t.first_stage_steps is not None:
        return t.first_stage_steps
    if t.epochs_per_stage is not None:
        return max(1, math.ceil(t.epochs_per_stage * per_epoch))
    return t.steps_per_stage


def lr_at(step: int, total: int, cfg: RunConfig, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay from lr to min_lr over `total` steps."""
    t = cfg.train
    if step < warmup:
        return t.lr * (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(1.0, progress_)))


# 3. one optimizer step ------------------------------------------------------------------------


def stage_at(cfg: RunConfig, step: int, num_train: int, world: int) -> int:
    """The curriculum stage global step `step` trains (stages follow each other, zero-length ones skipped)."""
    end, last = 0, cfg.curriculum.stages()[0]
    for stage in cfg.curriculum.stages():
        length = stage_length(cfg, stage, num_train, world)
        end, last = end + length, stage if length else last
        if step < end:
            return stage
    return last


def predicted_layouts(run: Run, step: int, world: int) -> list[Layout]:
    """(prefix, suffix) of every training example as laid out at the stage of global step `step`."""
    stage = stage_at(run.cfg, step, len(run.train_examples), world)
    if stage not in run.layouts:
        run.layouts[stage] = [predicted_layout(ex, stage, run.cfg.curriculum) for ex in run.train_examples]
    return run.layouts[stage]


def global_batch(run: Run, stage: int, global_step: int, world: int) -> list[Sequence]:
    """The sequences of global batch `global_step` in micro-batch order; rank r trains the r-th slice of
    train.batch_size. Every rank builds the whole batch, so it does not depend on the number of ranks."""
    cfg = run.cfg
    size, micro, n = cfg.train.batch_size * world, cfg.train.micro_batch_size, len(run.train_examples)
    if cfg.train.length_pool:
        indices = grouped_batch_indices(
            n,
            size,
            global_step,
            cfg.seed,
            cfg.train.length_pool,
            micro,
            lambda step: predicted_layouts(run, step, world),
        )
    else:
        indices = batch_indices(n, size, global_step, cfg.seed)
    # one stream per example of the global batch: the curriculum's mixing does not depend on the number of ranks
    rngs = [random.Random(f"{cfg.seed}-mix-{global_step}-{j}") for j in range(size)]
    seqs = [
        build_sequence(run.train_examples[i], stage, cfg.curriculum, run.lm.special, rng)
        for i, rng in zip(indices, rngs)
    ]
    if not cfg.train.group_by_length:
        return seqs
    if cfg.train.length_pool:  # mixing may have drawn other stages: arrange the sequences as built
        return [seqs[i] for i in arrange([sequence_layout(seq, run.lm.special) for seq in seqs], micro)]
    return sorted(seqs, key=lambda seq: len(seq.ids))  # micro-batches of similar length waste less on padding


def train_step(run: Run, stage: int, global_step: int) -> dict[str, float]:
    """Forward and backward over this rank's share of one global batch, then an optimizer step.

    Returns the mean losses and this rank's `tokens` (real) and `columns` (computed, padding included)."""
    cfg, acc = run.cfg, run.accelerator
    rank, per_rank = acc.process_index, cfg.train.batch_size
    seqs = global_batch(run, stage, global_step, acc.num_processes)[rank * per_rank : (rank + 1) * per_rank]
    micro = cfg.train.micro_batch_size
    totals = {"loss": 0.0, "lm_loss": 0.0, "thought_loss": 0.0}
    tokens = columns = 0
    for lo in range(0, len(seqs), micro):
        batch = collate(seqs[lo : lo + micro], run.lm.special).to(acc.device)
        with acc.accumulate(run.model):
            out = run.model(
                batch.input_ids,
                batch.attention_mask,
                labels=batch.labels,
                thought_targets=batch.thought_targets,
                thought_loss_weight=cfg.curriculum.thought_loss_weight,
            )
            acc.backward(out.loss)
            if acc.sync_gradients and cfg.train.grad_clip > 0:
                acc.clip_grad_norm_(run.model.parameters(), cfg.train.grad_clip)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        totals["loss"] += out.loss.item() / cfg.train.grad_accum
        totals["lm_loss"] += out.lm_loss.item() / cfg.train.grad_accum
        if out.thought_loss is not None:
            totals["thought_loss"] += out.thought_loss.item() / cfg.train.grad_accum
        tokens += int(batch.attention_mask.sum())
        columns += batch.input_ids.numel()
    totals["tokens"] = tokens
    totals["columns"] = columns
    return totals


# 4. evaluation and checkpoints ----------------------------------------------------------------


def eval_mode(cfg: RunConfig, stage: int) -> tuple[str, int]:
    """(mode, thoughts) a model trained up to `stage` is evaluated with."""
    return cfg.curriculum.mode, cfg.eval_thoughts(stage)


def run_eval(run: Run, lm: LatentLM, examples, stage: int) -> EvalResult:
    """Evaluate `lm` (rank 0's full model, see `snapshot`) on `examples` as trained up to `stage`."""
    mode, thoughts = eval_mode(run.cfg, stage)
    return evaluate(lm, examples, mode, thoughts, run.cfg.eval, seed=run.cfg.seed, show_progress=run.cfg.log.progress)


@dataclass
class Snapshot:
    """The full model and optimizer state on rank 0 (None on the other ranks)."""

    lm: LatentLM | None
    optimizer: torch.optim.Optimizer | OptimizerState | None


def snapshot(run: Run) -> Snapshot:
    """Collective, every rank calls it: the full weights for rank 0 to save or evaluate.

    Data parallel ranks each hold the full model already; sharded (train.fsdp) weights are
    gathered from every rank into a plain module on rank 0.
    """
    run.accelerator.wait_for_everyone()
    if not is_sharded(run.model):
        if not run.accelerator.is_main_process:
            return Snapshot(None, None)
        return Snapshot(run.accelerator.unwrap_model(run.model), run.optimizer)
    weights = gather_model_state(run.model)
    optimizer = gather_optimizer_state(run.model, run.optimizer)
    if not run.accelerator.is_main_process:
        return Snapshot(None, None)
    return Snapshot(unsharded_lm(run.lm, weights).to(run.accelerator.device), OptimizerState(optimizer))


def checkpoint(
    run: Run, name: str, state: TrainState, metrics: dict | None = None, snap: Snapshot | None = None
) -> None:
    """Collective: every rank calls it (with the same `snap` when one was taken), rank 0 writes."""
    snap = snap if snap is not None else snapshot(run)
    if run.accelerator.is_main_process:
        save_checkpoint(
            run.out_dir / "checkpoints" / name, snap.lm, state, to_dict(run.cfg), snap.optimizer, metrics=metrics
        )
    run.accelerator.wait_for_everyone()


# 5. the run -----------------------------------------------------------------------------------


def build_run(cfg: RunConfig, resume: str | None = None) -> tuple[Run, TrainState]:
    """Setup, data and model: everything before the first step (resuming when asked)."""
    # 1. setup
    set_threads(cfg.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=cfg.train.grad_accum)
    check_engine(accelerator)
    out_dir = Path(resume or cfg.out_dir)
    check_run_folder(out_dir, resume is not None)
    if cfg.train.push_to_hub:  # a push that cannot happen at the end is refused before the run starts
        check_push(cfg.train.hub_model_id)
    resume_from = latest_checkpoint(out_dir) if resume else None
    seed_everything(cfg.seed)

    # 2. data and model (a broken checkpoint fails here, before anything in the run folder changes)
    splits = load_splits(cfg.data, cfg.seed)
    lm = build_model(cfg, splits, resume_from)
    lm.train()
    if cfg.train.compile:
        lm.compile_backbone()  # the training forward only; evaluation's generation stays eager
    train_examples = tokenize_train(splits.train, lm, cfg.data.max_length)
    if cfg.train.fsdp:
        shard_lm(lm.to(accelerator.device))  # before the optimizer, which must hold the sharded parameters
    optimizer = make_optimizer(cfg, lm)
    state = TrainState(stage=cfg.curriculum.stages()[0])
    if resume_from is not None:
        state = resume_state(resume_from, lm, optimizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
    logger = MetricLogger(
        out_dir, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project, to_dict(cfg), fresh=resume_from is None
    )
    print0(f"coconav train: mode={cfg.curriculum.mode} stages={cfg.curriculum.stages()} out_dir={out_dir}")
    if resume_from is not None:
        print0(f"resuming from {resume_from} at stage {state.stage}, step {state.step}")
    if is_sharded(lm):
        model, optimizer = lm, accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(lm, optimizer)
    print0(
        f"data: train {len(splits.train)}, validation {len(splits.validation)}, test {len(splits.test)}; "
        f"model: {sum(p.numel() for p in lm.parameters()) / 1e6:.2f}M parameters"
    )
    return Run(cfg, accelerator, lm, model, optimizer, splits, train_examples, logger, out_dir), state


def resume_state(resume_from: Path, lm: LatentLM, optimizer: torch.optim.Optimizer) -> TrainState:
    """Optimizer, RNG and position of a checkpoint; a sharded optimizer takes its slice of the full state."""
    if not is_sharded(lm):
        return load_trainer_state(resume_from, optimizer)
    state = load_trainer_state(resume_from)
    full = read_optimizer_state(resume_from)
    if full is not None:
        load_optimizer_state(lm, optimizer, full)
    return state


def train_run(run: Run, state: TrainState, resumed: bool = False) -> dict:
    """The stages from `state` on, then the final test evaluation; returns the results."""
    cfg, accelerator, out_dir = run.cfg, run.accelerator, run.out_dir
    # 3. the stages
    stage_results = load_stage_results(out_dir) if resumed else []
    world = accelerator.num_processes
    for stage in cfg.curriculum.stages():
        if stage < state.stage or (stage == state.stage and state.stage_done):
            continue
        if stage_length(cfg, stage, len(run.train_examples), world) == 0:
            continue  # e.g. final_stage_steps: 0
        if stage > state.stage:  # a new stage
            state = TrainState(stage=stage, step=0, global_step=state.global_step)
            if cfg.train.reset_optimizer:
                run.optimizer.state.clear()
        stage_results.append(train_stage(run, stage, state))
        if accelerator.is_main_process:
            write_json_atomic(out_dir / "stages.json", stage_results)

    # 4. final test evaluation
    results = {"stages": stage_results, "train": padding_summary(stage_results)}
    if results["train"]["columns"]:
        print0(
            f"padding: {results['train']['padded_fraction']:.1%} of the {results['train']['columns']:,} computed "
            f"columns ({results['train']['tokens']:,} real tokens)"
        )
    snap = snapshot(run) if run.splits.test else Snapshot(None, None)
    if accelerator.is_main_process and run.splits.test:
        test = run_eval(run, snap.lm, run.splits.test, state.stage)
        mode, thoughts = eval_mode(cfg, state.stage)
        results["test"] = {"mode": mode, "num_thoughts": thoughts, "stage": state.stage, **test.summary()}
        write_json_atomic(out_dir / "results.json", results)
        run.logger.log(
            {f"test/{k}": v for k, v in test.summary().items() if isinstance(v, (int, float))}, state.global_step
        )
        print0(
            f"test: accuracy {test.accuracy:.3f}, forward passes {test.mean_forward_passes:.1f}, "
            f"thoughts {test.mean_thoughts:.1f}"
        )
        # the last stage's card gets its test numbers beside the validation ones (coconav.json keeps them)
        record_evaluation(latest_checkpoint(out_dir), {"test": {"split": "test", **test.summary()}})
    if accelerator.is_main_process and cfg.train.push_to_hub:
        url = push(latest_checkpoint(out_dir), cfg.train.hub_model_id)
        print0(f"pushed {latest_checkpoint(out_dir)} to {url}")
    accelerator.wait_for_everyone()
    run.logger.close()
    return results


def padding_summary(stage_results: list[dict]) -> dict:
    """Real tokens, computed columns (padding included) and the padded fraction over the stages trained
    (a resumed stage counts the steps run since the resume)."""
    tokens = sum(r.get("train_tokens", 0) for r in stage_results)
    columns = sum(r.get("train_columns", 0) for r in stage_results)
    return {"tokens": tokens, "columns": columns, "padded_fraction": 1 - tokens / columns if columns else 0.0}


def train(cfg: RunConfig, resume: str | None = None) -> dict:
    """Train every stage of the curriculum, evaluating and checkpointing after each; returns results."""
    run, state = build_run(cfg, resume)
    return train_run(run, state, resumed=resume is not None)


def tokenize_train(examples, lm: LatentLM, max_length: int) -> list[TokenizedExample]:
    """Tokenize training examples, dropping those whose CoT sequence exceeds max_length."""
    out = tokenize_examples(examples, lm.tokenizer)
    kept = [t for t in out if len(t.question) + sum(map(len, t.steps)) + len(t.answer) + 2 <= max_length]
    if len(kept) < len(out):
        print0(f"dropped {len(out) - len(kept)} training examples longer than data.max_length={max_length}")
    if not kept and examples:
        raise ConfigError(f"every training example is longer than data.max_length={max_length}")
    return kept


def load_stage_results(out_dir: Path) -> list:
    import json

    path = out_dir / "stages.json"
    return json.loads(path.read_text()) if path.is_file() else []


def train_stage(run: Run, stage: int, state: TrainState) -> dict:
    """Train one stage from `state.step` to its end; evaluate and checkpoint it."""
    cfg, acc = run.cfg, run.accelerator
    total = stage_length(cfg, stage, len(run.train_examples), acc.num_processes)
    whole = sum(stage_length(cfg, s, len(run.train_examples), acc.num_processes) for s in cfg.curriculum.stages())
    bar = progress(total=total, desc=f"stage {stage}", enabled=cfg.log.progress)
    bar.update(state.step)
    window = {
        "loss": 0.0,
        "lm_loss": 0.0,
        "thought_loss": 0.0,
        "tokens": 0,
        "columns": 0,
        "n": 0,
        "start": time.perf_counter(),
    }
    stage_tokens = stage_columns = 0  # this process's real tokens and computed columns over the stage
    while state.step < total:
        if cfg.train.restart_schedule:  # warm up when Adam's moments are fresh: the first stage or after a reset
            fresh = stage == cfg.curriculum.stages()[0] or cfg.train.reset_optimizer
            lr = lr_at(state.step, total, cfg, cfg.train.warmup_steps if fresh else 0)
        else:
            lr = lr_at(state.global_step, whole, cfg, cfg.train.warmup_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        stats = train_step(run, stage, state.global_step)
        state.step += 1
        state.global_step += 1
        bar.update(1)
        for key in ("loss", "lm_loss", "thought_loss", "tokens", "columns"):
            window[key] += stats[key]
        window["n"] += 1
        stage_tokens, stage_columns = stage_tokens + stats["tokens"], stage_columns + stats["columns"]
        if state.step % cfg.train.log_every == 0 or state.step == total:
            seconds = time.perf_counter() - window["start"]
            tokens, columns = sum_over_ranks(acc, [window["tokens"], window["columns"]])
            metrics = {
                "train/loss": window["loss"] / window["n"],
                "train/lm_loss": window["lm_loss"] / window["n"],
                "train/thought_loss": window["thought_loss"] / window["n"],
                "train/lr": lr,
                "train/stage": stage,
                "train/tokens_per_second": window["tokens"] / max(seconds, 1e-9),
                "train/tokens": tokens / window["n"],
                "train/columns": columns / window["n"],
                "train/padded_fraction": 1 - tokens / max(columns, 1),
            }
            run.logger.log(metrics, state.global_step)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}")
            window.update(loss=0.0, lm_loss=0.0, thought_loss=0.0, tokens=0, columns=0, n=0, start=time.perf_counter())
        if cfg.train.save_every and state.step % cfg.train.save_every == 0 and state.step < total:
            checkpoint(run, "last", state)
    bar.close()
    state.stage_done = True
    tokens, columns = sum_over_ranks(acc, [stage_tokens, stage_columns])
    result = {"stage": stage, "global_step": state.global_step, "train_tokens": tokens, "train_columns": columns}
    snap = snapshot(run)  # every rank: sharded weights are gathered for rank 0 to evaluate and save
    if cfg.train.eval_each_stage and acc.is_main_process and run.splits.validation:
        val = run_eval(run, snap.lm, run.splits.validation, stage)
        mode, thoughts = eval_mode(cfg, stage)
        result.update({"mode": mode, "num_thoughts": thoughts, **val.summary()})
        run.logger.log(
            {"eval/accuracy": val.accuracy, "eval/mean_forward_passes": val.mean_forward_passes, "eval/stage": stage},
            state.global_step,
        )
        print0(
            f"stage {stage}: validation accuracy {val.accuracy:.3f} with {thoughts} thoughts, "
            f"{val.mean_forward_passes:.1f} forward passes"
        )
    checkpoint(run, f"stage-{stage}", state, metrics=result, snap=snap)
    return result
