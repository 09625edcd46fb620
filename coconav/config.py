"""Run configuration: documented dataclasses, loaded from YAML presets with ``key.sub=value`` overrides.

A preset in ``configs/`` mirrors ``RunConfig``; every field below has a type, a default and a
one-line meaning. Unknown keys, wrong types and out-of-range values raise ``ConfigError`` naming
the key and what is allowed; ``__post_init__`` validates and derives.

    cfg = load_config("configs/demo.yaml", ["train.lr=3e-4", "curriculum.mode=cot"])
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from coconav.errors import ConfigError

Mode = Literal["cot", "no_cot", "coconut", "pause"]


_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")  # a Hub repo id


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class LoraConfig:
    """LoRA adapters through PEFT (the base model stays frozen)."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input; 0 saves activation memory."""
    target_modules: list[str] | None = None
    """Module names that get adapters. None: every linear projection of the decoder layers, found by
    inspecting the model (Llama/Qwen/Mistral/Gemma/OLMo q,k,v,o,gate,up,down_proj; Phi-3 qkv_proj, o_proj,
    gate_up_proj, down_proj; GPT-2 c_attn, c_proj, c_fc; GPT-NeoX query_key_value, dense, dense_h_to_4h,
    dense_4h_to_h); never the output head or the embeddings."""
    adapter_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the adapter weights (bf16 saves memory on large models)."""
    train_new_embeddings: bool = True
    """Also train the embedding and head rows of the new latent tokens (<bot>, <eot>, <thought>)."""

    def __post_init__(self) -> None:
        _check(self.r > 0, f"model.lora.r must be > 0, got {self.r}")
        _check(0.0 <= self.dropout < 1.0, f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        _check(
            self.target_modules is None or len(self.target_modules) > 0,
            "model.lora.target_modules must name at least one module, or be left unset (null) to find them",
        )


@dataclass
class ModelConfig:
    """The backbone language model and how thoughts are formed from its hidden states."""

    name_or_path: str = "scratch-llama"
    """A Hugging Face hub id, a local folder, 'smollm2-135m', or 'scratch-llama'/'scratch-gpt2' for a
    randomly initialised model of the size below (built-in tasks, tests)."""
    hidden_size: int = 128
    """Width of a from-scratch model (ignored for pretrained models)."""
    num_layers: int = 3
    """Decoder layers of a from-scratch model."""
    num_heads: int = 4
    """Attention heads of a from-scratch model."""
    intermediate_size: int = 512
    """MLP width of a from-scratch model."""
    max_position_embeddings: int = 512
    """Context length of a from-scratch model."""
    tie_embeddings: bool = True
    """Tie input and output embeddings of a from-scratch model."""
    dtype: Literal["float32", "bfloat16"] | None = None
    """Weight dtype; 'bfloat16' stores the base model in bf16. None: float32 for a new model, and a loaded
    checkpoint's own dtype (init_from, --resume, a navigator's COCONUT model)."""
    autocast: Literal["none", "bfloat16"] = "none"
    """Mixed precision for forward passes (weights stay in `dtype`)."""
    attn_implementation: Literal["sdpa", "eager"] | None = None
    """Attention kernel passed to transformers. None: 'sdpa' where the model family supports it, else
    'eager' (Gemma 2: SDPA cannot soft-cap attention scores); a family refusing the one named is a ConfigError."""
    thought_norm: Literal["none", "embedding"] = "none"
    """How a last hidden state becomes a thought: 'none' feeds it back as is (the paper's rule);
    'embedding' rescales it to the mean L2 norm of the input-embedding rows (scale detached)."""
    gradient_checkpointing: bool = False
    """Recompute decoder-layer activations in backward; the thought loop keeps its KV cache."""
    kv_cache: Literal["dynamic", "static"] = "dynamic"
    """Generation's KV cache: 'dynamic' grows by a column per step (the reference); 'static' is
    preallocated to the batch's longest prompt plus the thought and answer budget, so every step has
    the same shapes (rows that halt stay masked). Outputs are equal within float rounding."""
    compile: bool = False
    """torch.compile generation's prefill and one-column step (thoughts and answer tokens): inductor on
    a CPU, CUDA graphs ('reduce-overhead') on a GPU; implies kv_cache 'static'. Compiling takes tens of
    seconds per new batch shape, so it pays on long evaluations and rollouts, not on a few questions.
    The training forward is compiled separately, by train.compile."""
    lora: LoraConfig | None = None
    """LoRA settings; None means full fine-tuning."""

    def __post_init__(self) -> None:
        _check(bool(self.name_or_path), "model.name_or_path must not be empty")
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            _check(getattr(self, name) > 0, f"model.{name} must be > 0, got {getattr(self, name)}")
        _check(
            self.hidden_size % self.num_heads == 0,
            f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})",
        )


@dataclass
class DataConfig:
    """Where examples come from: a built-in task or data files / hub ids."""

    task: str = "arithmetic"
    """A built-in task ('arithmetic', 'graph', 'prosqa') or 'files' to read train/validation/test below. With a
    built-in task, `validation` and `test` (if set) replace the generated splits: 'prosqa' trains on generated
    questions and is scored on the real ProsQA files."""
    train: str | None = None
    """Training data spec when task='files': a hub id 'owner/name:split' loaded through `datasets` (GSM8K rows
    'openai/gsm8k:train', GSM8k-Aug rows 'whynlp/gsm8k-aug:train'), or a local file (.jsonl GSM8K, .txt GSM8k-Aug,
    .json COCONUT; 'gsm8k:PATH', 'gsm8k_aug:PATH', 'coconut:PATH' force the format). Relative paths are from the
    working directory."""
    validation: str | None = None
    """Validation data spec, as `train` (task='files' and None: hold out `validation_size` training rows; a
    built-in task and None: generated)."""
    test: str | None = None
    """Test data spec, as `train` (e.g. 'openai/gsm8k:test', a local test.jsonl, ProsQA's test.json); a built-in
    task and None: generated."""
    gsm8k_steps: Literal["notes", "lines"] = "notes"
    """How GSM8K rationales become steps: one per calculator note (GSM8k-Aug style) or one per line."""
    train_size: int = 50000
    """Built-in tasks: training examples generated; files: at most this many rows (0 = all)."""
    validation_size: int = 300
    """Validation examples (generated, or held out / read)."""
    test_size: int = 500
    """Test examples (generated, or at most this many rows read; 0 = all)."""
    min_difficulty: int = 1
    """Built-in tasks: fewest reasoning steps."""
    max_difficulty: int = 6
    """Built-in tasks: most reasoning steps."""
    max_length: int = 512
    """Longest tokenized training sequence; longer ones are dropped with a warning."""

    def __post_init__(self) -> None:
        _check(self.train_size >= 0, f"data.train_size must be >= 0, got {self.train_size}")
        _check(self.validation_size >= 0, f"data.validation_size must be >= 0, got {self.validation_size}")
        _check(self.test_size >= 0, f"data.test_size must be >= 0, got {self.test_size}")
        _check(
            1 <= self.min_difficulty <= self.max_difficulty,
            f"need 1 <= data.min_difficulty <= data.max_difficulty, got {self.min_difficulty} and {self.max_difficulty}",
        )
        _check(self.max_length > 8, f"data.max_length must be > 8, got {self.max_length}")
        if self.task == "files":
            _check(self.train is not None or self.test is not None, "data.task=files needs data.train or data.test")


@dataclass
class CurriculumConfig:
    """The COCONUT multi-stage curriculum (paper §3) and its baselines."""

    mode: Mode = "coconut"
    """'coconut' (continuous thoughts), 'cot' (language steps), 'no_cot' (answer only), or 'pause'
    (the same number of <pause> tokens in place of thoughts: the paper's 'pause as thought')."""
    thoughts_per_step: int = 1
    """Thoughts that replace one reasoning step (the paper's c)."""
    max_stage: int = 6
    """Last stage that replaces steps one by one (the paper's max_latent_stage); the stage after it
    drops every remaining language step and keeps max_stage x thoughts_per_step thoughts."""
    pad_to_max: bool = True
    """In the final stage every example gets max_stage x c thoughts, even with fewer steps (paper's
    pad_latent_to_max); False gives min(steps, max_stage) x c (that uses the example's own step count)."""
    mix_prob: float = 0.0
    """Probability that a training example is drawn at another stage (paper's uniform_prob)."""
    mix_from: Literal["any", "lower"] = "any"
    """'any': a stage uniform in 0..number of steps (the paper); 'lower': a stage uniform in 0..current-1."""
    no_curriculum: bool = False
    """Skip to the final stage directly (the paper's 'w/o curriculum' ablation)."""
    start_stage: int = 0
    """First stage to train (e.g. 1 when starting from a CoT checkpoint, as the paper does)."""
    thought_loss_weight: float = 0.0
    """Auxiliary loss: the state fed back as thought i, read through the LM head, must predict the
    first token of step i's result (the answer for padding thoughts). 0 = the paper's COCONUT."""
    thought_target: Literal["step", "frontier"] = "step"
    """What the thought loss asks of thought i: 'step', step i's result (one token); 'frontier', for questions
    that carry their graph (ProsQA), every concept at BFS depth i from the question's person at once (mean
    cross-entropy over the set: the search frontier the paper reads in its thoughts, §5), the answer after the
    deepest layer. Questions without a graph fall back to 'step'."""

    def __post_init__(self) -> None:
        _check(self.thoughts_per_step >= 1, f"curriculum.thoughts_per_step must be >= 1, got {self.thoughts_per_step}")
        _check(self.max_stage >= 1, f"curriculum.max_stage must be >= 1, got {self.max_stage}")
        _check(0.0 <= self.mix_prob <= 1.0, f"curriculum.mix_prob must be in [0, 1], got {self.mix_prob}")
        _check(
            0 <= self.start_stage <= self.max_stage + 1,
            f"curriculum.start_stage must be in [0, {self.max_stage + 1}], got {self.start_stage}",
        )
        _check(
            self.thought_loss_weight >= 0,
            f"curriculum.thought_loss_weight must be >= 0, got {self.thought_loss_weight}",
        )

    @property
    def final_stage(self) -> int:
        """The all-latent stage: every language step replaced (paper: scheduled_stage > max_latent_stage)."""
        return self.max_stage + 1

    def stages(self) -> list[int]:
        """Stages trained, in order, for this mode."""
        if self.mode in ("cot", "no_cot"):
            return [0]
        if self.no_curriculum:
            return [self.final_stage]
        return list(range(self.start_stage, self.final_stage + 1))

    def thoughts_at(self, stage: int) -> int:
        """Thoughts every example gets at `stage` when padded to the stage (evaluation count)."""
        if self.mode not in ("coconut", "pause"):
            return 0
        return min(stage, self.max_stage) * self.thoughts_per_step


@dataclass
class TrainConfig:
    """Optimisation and schedule."""

    batch_size: int = 128
    """Examples per optimizer step (per process), before gradient accumulation splits it."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; micro-batch = batch_size / grad_accum."""
    group_by_length: bool = True
    """Order each global batch by length (by <bot>-aligned layout with length_pool) before cutting micro-batches."""
    length_pool: int = 0
    """0: random batches; k >= 1: length-grouped batches from pools of k global batches (data/grouping.py)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    min_lr: float = 1e-4
    """Learning rate at the end of each stage's cosine decay."""
    warmup_steps: int = 100
    """Linear warmup steps, at the start of the run and after every optimizer reset."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 disables)."""
    steps_per_stage: int = 200
    """Optimizer steps in each curriculum stage (ignored when epochs_per_stage is set)."""
    first_stage_steps: int | None = None
    """Steps of stage 0 (CoT) or of the only stage of cot/no_cot runs; None = steps_per_stage."""
    final_stage_steps: int | None = None
    """Steps of the final all-latent stage; None = steps_per_stage; 0 skips it."""
    epochs_per_stage: float | None = None
    """If set, stage length in passes over the training set (the paper's epochs_per_stage)."""
    first_stage_epochs: float | None = None
    """If set, the length of stage 0 (or of a cot/no_cot run) in epochs; overrides first_stage_steps."""
    final_stage_epochs: float | None = None
    """If set, the length of the final all-latent stage in epochs; overrides final_stage_steps."""
    reset_optimizer: bool = False
    """Fresh AdamW state at every stage (the paper resets it for GSM8K)."""
    restart_schedule: bool = True
    """Restart warmup + cosine at every stage (False: one schedule over the whole run)."""
    log_every: int = 25
    """Steps between log lines."""
    save_every: int = 0
    """Steps between mid-stage checkpoints for resuming (0: only at stage ends)."""
    eval_each_stage: bool = True
    """Evaluate on the validation split at the end of each stage."""
    fsdp: bool = False
    """Shard weights, gradients and optimizer state over the processes (torch FSDP2; full fine-tuning, 2+ processes)."""
    compile: bool = False
    """torch.compile the backbone's decoder for the training forward (inductor; opt-in, compiles for minutes on a CPU).
    Generation (evaluation, rollouts) is compiled separately, by model.compile."""
    push_to_hub: bool = False
    """At the end of training, push the final checkpoint (with its test evaluation in the card) to hub_model_id
    (rank 0; needs a Hub token: checked before the run starts)."""
    hub_model_id: str | None = None
    """The Hub model repo OWNER/NAME that push_to_hub pushes to (created if missing)."""

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(
            not self.push_to_hub or (self.hub_model_id is not None and _REPO_ID.fullmatch(self.hub_model_id)),
            f"train.push_to_hub needs train.hub_model_id=OWNER/NAME (the Hub repo to push to), got {self.hub_model_id!r}",
        )
        _check(
            not (self.compile and self.fsdp), "train.compile does not work with train.fsdp: set one of them to false"
        )
        _check(self.grad_accum >= 1, f"train.grad_accum must be >= 1, got {self.grad_accum}")
        _check(
            self.batch_size % self.grad_accum == 0,
            f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum ({self.grad_accum})",
        )
        _check(
            self.length_pool >= 0,
            f"train.length_pool must be >= 0 (0: batches drawn at random; k: pools of k "
            f"global batches grouped by length), got {self.length_pool}",
        )
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr], got {self.min_lr}")
        _check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"train.betas must be two numbers in [0, 1), got {self.betas}",
        )
        _check(self.steps_per_stage >= 1, f"train.steps_per_stage must be >= 1, got {self.steps_per_stage}")
        _check(self.first_stage_steps is None or self.first_stage_steps >= 0, "train.first_stage_steps must be >= 0")
        _check(self.final_stage_steps is None or self.final_stage_steps >= 0, "train.final_stage_steps must be >= 0")
        for name in ("epochs_per_stage", "first_stage_epochs", "final_stage_epochs"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"train.{name} must be > 0 or null, got {value}")
        _check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")
        _check(self.save_every >= 0, f"train.save_every must be >= 0, got {self.save_every}")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum


@dataclass
class EvalConfig:
    """Evaluation and generation."""

    num_thoughts: int | None = None
    """Thoughts per question at evaluation; None = the last trained stage's count. Never the test
    example's own number of steps."""
    max_new_tokens: int = 64
    """Answer tokens generated at most (including remaining language steps)."""
    batch_size: int = 64
    """Questions per generation batch."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_questions: int = 0
    """Evaluate at most this many questions (0 = all)."""

    def __post_init__(self) -> None:
        _check(
            self.num_thoughts is None or self.num_thoughts >= 0,
            f"eval.num_thoughts must be >= 0, got {self.num_thoughts}",
        )
        _check(self.max_new_tokens >= 1, f"eval.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}")
        _check(self.temperature > 0, f"eval.temperature must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"eval.top_p must be in (0, 1], got {self.top_p}")
        _check(self.max_questions >= 0, f"eval.max_questions must be >= 0, got {self.max_questions}")


@dataclass
class NavigatorConfig:
    """The navigator policy: steering, halting and value heads over latent states, with memory."""

    hidden: int = 128
    """Width of the navigator's trunk."""
    action_dim: int = 16
    """Dimension of the Gaussian steering action (mapped into the LM's hidden space by an up-projection)."""
    init_log_std: float = -1.0
    """Initial log standard deviation of the steering action."""
    temperature: float = 1.0
    """Exploration temperature multiplying the steering std at the start of training."""
    temperature_final: float = 1.0
    """Temperature at the last update (annealed by temperature_schedule; evaluation uses the mean action)."""
    temperature_schedule: Literal["linear", "cosine", "exponential"] = "linear"
    """Annealing shape from temperature to temperature_final over the PPO updates (coconav.rl.ppo.anneal)."""
    max_trajectories: int = 16
    """Most trajectories per question (K, TRL's num_generations); sizes the trajectory-index embedding."""
    temperature_spread: float = 2.0
    """Per-trajectory exploration: the K trajectories of a question get the scheduled temperature times
    spread ** linspace(-1, 1, K) (geometric, mean 1 in log space; 1.0 = all alike; K = 1 gets x1)."""
    inference_temperature: float = 0.5
    """Inference with K > 1: trajectory 0 takes the mean action (greedy, as K = 1); trajectories 1..K-1
    sample their steering with this temperature times the spread over K-1 (answers greedy)."""
    inference_halting: Literal["greedy", "sample"] = "greedy"
    """Inference with K > 1: how trajectories 1..K-1 halt. greedy: halt where p > halt_threshold, like trajectory
    0; sample: draw each halting decision from p (shifted by halt_threshold) with the trajectory's own stream, so
    the trajectories also differ in how long they think (trajectory 0 stays greedy)."""
    halt_threshold: float = 0.5
    """Inference (evaluation, generate): halt where the halting probability exceeds this. It shifts the halting
    logit by -logit(halt_threshold) at inference, so that the sampled halting of inference_halting = sample moves
    with it; training rollouts sample the policy's own probability. Chosen by the recipe under pass_budget."""
    multi_halt_threshold: float | None = None
    """Inference with K != 1 trajectories per question (evaluate_multi, `coconav eval --num-trajectories K`,
    generate): halt where the halting probability exceeds this. Trajectories that read each other through the group
    memory halt differently than one alone, so K > 1 has its own threshold. null: halt_threshold. Chosen by the
    recipe under multi_pass_budget."""
    pass_budget: float | None = None
    """A compute budget at inference with K = 1: the mean forward passes per question (the prefill, each thought and
    each answer token) of the greedy navigator alone (the run's navigator rows). When set, the recipe chooses
    halt_threshold after training, on the validation split: the most accurate threshold of halt_threshold_grid
    whose mean passes fit the budget (ties: fewer passes); it is saved in the checkpoint's config and reported in
    results.json (pass_budget). null: halt_threshold as set."""
    multi_pass_budget: float | None = None
    """A compute budget at inference with K = ppo.eval_trajectories > 1 (default ppo.num_trajectories) trajectories
    fused by ppo.fusion: the mean forward passes per question, every trajectory counted. When set (and K > 1), the
    recipe chooses multi_halt_threshold after training on the validation split, as pass_budget does for K = 1; saved
    in the checkpoint's config and reported in results.json (multi_pass_budget). null: multi_halt_threshold as set."""
    halt_threshold_grid: list[float] = field(
        default_factory=lambda: [
            0.001,
            0.002,
            0.005,
            0.01,
            0.02,
            0.05,
            0.1,
            0.2,
            0.3,
            0.4,
            0.5,
            0.6,
            0.7,
            0.8,
            0.85,
            0.9,
            0.95,
            0.98,
        ]
    )
    """Thresholds tried under pass_budget (each one evaluation of the validation split)."""
    halt_threshold_refine: int = 6
    """Bisection steps after the grid under pass_budget / multi_pass_budget: two adjacent grid thresholds, one within
    the budget and one over it, bracket the point where the budget is crossed, and each step (one more evaluation of
    the validation split) halves that bracket in logit space, so a budget in a coarse gap of the grid (where passes
    jump, e.g. 17.4 at 0.85 and 8.0 at 0.9) is spent instead of left unused. 0: the grid alone."""
    group_memory: bool = True
    """Cross-communication: each trajectory attends over the other trajectories of its question (their
    states at steps <= t); off = trajectories are independent (nothing else changes)."""
    trajectories_budget: float | None = None
    """K = "auto": the mean number of trajectories per question the K-selector may spend (>= 1, <= max_trajectories)."""
    steer_scale: Literal["none", "rms"] = "none"
    """Units of the steering offset: none = U a (as before); rms = U a times the RMS of plain COCONUT thoughts,
    measured once on the first rollout's questions and saved with the checkpoint (same offset/norm on any backbone)."""
    steering: bool = True
    """Steer thoughts (False: halting only, thoughts are plain COCONUT)."""
    halting: bool = True
    """Learn when to stop (False: always max_thoughts thoughts)."""
    min_thoughts: int = 0
    """Thoughts before the first halting decision."""
    max_thoughts: int = 8
    """Thought budget: the navigator halts at the latest here."""
    init_halt_bias: float = -2.0
    """Initial logit of the halting probability (-2 = 12%)."""
    episodic_memory: bool = True
    """Attend over the trajectory's own earlier thoughts at every step."""
    persistent_memory: bool = True
    """Read a bank of thoughts from past trajectories keyed by the question (top-k similarity, gated)."""
    memory_size: int = 1024
    """Entries in the persistent bank; when full the lowest-return entry is evicted (ties: oldest)."""
    memory_topk: int = 4
    """Entries read per question."""
    memory_min_return: float = 0.5
    """Only trajectories whose return reaches this are written to the bank."""

    def halt_threshold_at(self, num_trajectories: int | str) -> float:
        """Where halting stops with `num_trajectories` per question: multi_halt_threshold at K != 1 when it is set,
        else halt_threshold."""
        if num_trajectories != 1 and self.multi_halt_threshold is not None:
            return self.multi_halt_threshold
        return self.halt_threshold

    def __post_init__(self) -> None:
        _check(self.hidden > 0, f"navigator.hidden must be > 0, got {self.hidden}")
        _check(self.action_dim > 0, f"navigator.action_dim must be > 0, got {self.action_dim}")
        _check(
            self.temperature > 0 and self.temperature_final > 0,
            "navigator.temperature and temperature_final must be > 0",
        )
        _check(self.max_thoughts >= 1, f"navigator.max_thoughts must be >= 1, got {self.max_thoughts}")
        _check(
            0 <= self.min_thoughts <= self.max_thoughts,
            f"navigator.min_thoughts must be in [0, max_thoughts={self.max_thoughts}], got {self.min_thoughts}",
        )
        _check(self.memory_size >= 1, f"navigator.memory_size must be >= 1, got {self.memory_size}")
        _check(self.memory_topk >= 1, f"navigator.memory_topk must be >= 1, got {self.memory_topk}")
        _check(
            1 <= self.max_trajectories <= 64,
            f"navigator.max_trajectories must be in [1, 64], got {self.max_trajectories}",
        )
        _check(
            self.temperature_spread >= 1, f"navigator.temperature_spread must be >= 1, got {self.temperature_spread}"
        )
        _check(
            self.inference_temperature >= 0,
            f"navigator.inference_temperature must be >= 0, got {self.inference_temperature}",
        )
        _check(0 < self.halt_threshold < 1, f"navigator.halt_threshold must be in (0, 1), got {self.halt_threshold}")
        _check(
            self.multi_halt_threshold is None or 0 < self.multi_halt_threshold < 1,
            f"navigator.multi_halt_threshold must be in (0, 1) or null, got {self.multi_halt_threshold}",
        )
        for name in ("pass_budget", "multi_pass_budget"):
            budget = getattr(self, name)
            _check(
                budget is None or budget > 1,
                f"navigator.{name} must be > 1 (forward passes per question, the prefill included) or null, "
                f"got {budget}",
            )
        _check(
            len(self.halt_threshold_grid) >= 1 and all(0 < t < 1 for t in self.halt_threshold_grid),
            f"navigator.halt_threshold_grid must hold thresholds in (0, 1), got {self.halt_threshold_grid}",
        )
        _check(
            self.halt_threshold_refine >= 0,
            f"navigator.halt_threshold_refine must be >= 0 (bisection steps), got {self.halt_threshold_refine}",
        )
        _check(
            self.trajectories_budget is None or 1 <= self.trajectories_budget <= self.max_trajectories,
            f"navigator.trajectories_budget must be in [1, max_trajectories={self.max_trajectories}] or null, "
            f"got {self.trajectories_budget}",
        )


@dataclass
class PPOConfig:
    """Proximal policy optimisation of the navigator (names as in cleanrl / the PPO paper)."""

    updates: int = 100
    """PPO iterations (rollout, then epochs of minibatch updates)."""
    rollout_batch: int = 64
    """Questions per rollout."""
    num_trajectories: int = 1
    """Trajectories per question (K; TRL's num_generations); 1 = single-trajectory multi-step; at most 16."""
    advantage: Literal["gae", "group"] = "gae"
    """Advantage estimator: gae = GAE with the value head; group = each trajectory's return minus its
    question's mean over the K trajectories (GRPO; needs num_trajectories >= 2). With group the value head
    still trains (vf_coef) on the reward-to-go, as the value-weighted fusion's weights."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """advantage=group: divide by the std of the question's group, of the whole (global) batch, or not at all (TRL's
    name). "group" (the default, as earlier runs) blows a pure cost difference (every trajectory right, 0.01 per pass
    apart) up to +-1, the size of right against wrong; "none" keeps it as small as it is (tests/rl/test_ppo.py). On
    the hard setting's validation split "none" left the steering navigator near fixed 3-thought COCONUT (18.5-19.6
    passes at every halting threshold: no pass budget below that can be met) and "group" kept its halting
    responsive to the threshold (docs/guides/trajectories.md)."""
    scorer_coef: float = 1.0
    """Weight of the fusion scorer's loss (BCE of each trajectory's final score against its correctness). The
    scorer reads detached trunk features: it never changes the policy or the value head (0 = not trained)."""
    selector_coef: float = 1.0
    """Weight of the K-selector's loss (BCE of the question's success logit against the share of its trajectories
    that were right). It reads the detached question key with its own parameters (0 = not trained)."""
    fusion: Literal["majority", "value", "scorer"] = "majority"
    """Fusion rule of the rollout diagnostic rollout/fused_accuracy and of the final multi-trajectory test row."""
    eval_trajectories: int | None = None
    """K of the final multi-trajectory test row (navigator_multi), which is written when this K is > 1; null: the
    num_trajectories the run trains with (a run may train with 8 per question and answer with 5)."""
    epsilon: float = 0.2
    """Clip range of the probability ratio."""
    gamma: float = 1.0
    """Discount across thought steps."""
    lam: float = 0.95
    """GAE lambda."""
    ppo_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch."""
    target_kl: float | None = 0.05
    """Stop the epochs of an update early when approx KL exceeds this (None: never)."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    clip_value: float | None = None
    """Clip the value update to this range around the old value (None: no clipping)."""
    norm_adv: bool = True
    """Normalise GAE advantages per minibatch (group advantages are used as computed, as in TRL)."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip."""
    lr: float = 3e-4
    """Adam learning rate of the navigator."""
    thought_cost: float = 0.02
    """Reward subtracted per thought."""
    token_cost: float = 0.0
    """Reward subtracted per generated answer token (with token_cost = thought_cost every forward pass
    costs the same, so the policy cannot trade thoughts for language steps for free)."""
    format_coef: float = 0.0
    """Reward for an answer in the '### answer' format (0: off)."""
    answer_in_policy: bool = True
    """Count the decoded answer as the episode's last action (its log-probability, which depends on the
    steered thoughts, enters the ratio): this is what trains the up-projection."""
    train_lm: bool = False
    """Also train the LM (LoRA through PEFT) with the policy gradient on the answer tokens."""
    lm_lr: float = 1e-5
    """Learning rate of the LM's trainable parameters when train_lm is on."""
    beta: float = 0.05
    """KL penalty coefficient to the frozen reference LM (train_lm only)."""
    eval_every: int = 10
    """Updates between evaluations on the validation split."""
    cold_start_questions: int = 0
    """Supervised cold start of the halting head before PPO (0: off): this many training questions are answered
    at every fixed thought count k = min_thoughts..max_thoughts, each question's best k (most reward: right
    minus the cost of its passes) becomes its halting target, and the halting head learns it by cross-entropy on
    the plain COCONUT thoughts (SLPO's cold start, arXiv 2607.19691). Then PPO trains as usual."""
    cold_start_epochs: int = 20
    """Passes over the cold-start questions."""
    cold_start_lr: float = 1e-3
    """Adam learning rate of the cold start (a fresh optimizer: PPO's starts afterwards)."""

    @property
    def answer_trajectories(self) -> int:
        """K of the final multi-trajectory row: eval_trajectories, else num_trajectories."""
        return self.eval_trajectories or self.num_trajectories

    def __post_init__(self) -> None:
        _check(self.updates >= 1, f"ppo.updates must be >= 1, got {self.updates}")
        _check(self.rollout_batch >= 1, f"ppo.rollout_batch must be >= 1, got {self.rollout_batch}")
        _check(
            1 <= self.num_trajectories <= 16, f"ppo.num_trajectories must be in [1, 16], got {self.num_trajectories}"
        )
        _check(
            self.advantage != "group" or self.num_trajectories >= 2,
            f"ppo.advantage='group' compares the K trajectories of a question and needs ppo.num_trajectories >= 2, "
            f"got {self.num_trajectories}: set ppo.num_trajectories=4 (for example) or ppo.advantage=gae",
        )
        _check(
            self.eval_trajectories is None or 1 <= self.eval_trajectories <= 16,
            f"ppo.eval_trajectories must be in [1, 16] or null, got {self.eval_trajectories}",
        )
        _check(self.scorer_coef >= 0, f"ppo.scorer_coef must be >= 0, got {self.scorer_coef}")
        _check(self.selector_coef >= 0, f"ppo.selector_coef must be >= 0, got {self.selector_coef}")
        _check(self.epsilon > 0, f"ppo.epsilon must be > 0 (the clip range, e.g. 0.2), got {self.epsilon}")
        _check(0 <= self.gamma <= 1, f"ppo.gamma must be in [0, 1], got {self.gamma}")
        _check(0 <= self.lam <= 1, f"ppo.lam must be in [0, 1], got {self.lam}")
        _check(self.ppo_epochs >= 1, f"ppo.ppo_epochs must be >= 1, got {self.ppo_epochs}")
        _check(self.num_minibatches >= 1, f"ppo.num_minibatches must be >= 1, got {self.num_minibatches}")
        _check(
            self.rollout_batch * self.num_trajectories >= self.num_minibatches,
            f"ppo.rollout_batch x num_trajectories ({self.rollout_batch * self.num_trajectories}) must be >= "
            f"ppo.num_minibatches ({self.num_minibatches})",
        )
        _check(self.target_kl is None or self.target_kl > 0, f"ppo.target_kl must be > 0 or null, got {self.target_kl}")
        _check(self.vf_coef >= 0, f"ppo.vf_coef must be >= 0, got {self.vf_coef}")
        _check(self.ent_coef >= 0, f"ppo.ent_coef must be >= 0, got {self.ent_coef}")
        _check(self.clip_value is None or self.clip_value > 0, "ppo.clip_value must be > 0 or null")
        _check(self.max_grad_norm > 0, f"ppo.max_grad_norm must be > 0, got {self.max_grad_norm}")
        _check(self.lr > 0, f"ppo.lr must be > 0, got {self.lr}")
        _check(self.thought_cost >= 0, f"ppo.thought_cost must be >= 0, got {self.thought_cost}")
        _check(self.token_cost >= 0, f"ppo.token_cost must be >= 0, got {self.token_cost}")
        _check(self.beta >= 0, f"ppo.beta must be >= 0, got {self.beta}")
        _check(self.eval_every >= 1, f"ppo.eval_every must be >= 1, got {self.eval_every}")
        _check(
            self.cold_start_questions >= 0, f"ppo.cold_start_questions must be >= 0, got {self.cold_start_questions}"
        )
        _check(self.cold_start_epochs >= 1, f"ppo.cold_start_epochs must be >= 1, got {self.cold_start_epochs}")
        _check(self.cold_start_lr > 0, f"ppo.cold_start_lr must be > 0, got {self.cold_start_lr}")


@dataclass
class LogConfig:
    """Where metrics go. JSONL is always written; the others only when installed and asked for."""

    tensorboard: bool = False
    """Also log to TensorBoard (needs the `tensorboard` package)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the `wandb` package)."""
    wandb_project: str = "coconav"
    """W&B project name."""
    progress: bool = True
    """Show progress bars."""


DEMO_ROWS: tuple[str, ...] = (
    "no_cot",
    "cot",
    "coconut",
    "navigator",
    "navigator_multi",
    "cot_vote",
    "coconut_noise_vote",
    "coconut_sample_vote",
)


@dataclass
class DemoConfig:
    """What `coconav demo` compares (read by the demo only; `coconav train` ignores it)."""

    rows: list[str] = field(default_factory=lambda: ["no_cot", "cot", "coconut", "navigator"])
    """Rows of the comparison, in order: 'no_cot', 'cot', 'coconut', 'navigator', 'navigator_multi', and the
    untrained vote baselines 'cot_vote' (K sampled CoT chains), 'coconut_noise_vote' (K noisy COCONUT
    trajectories) and 'coconut_sample_vote' (K COCONUT trajectories with sampled answer tokens), each fused by
    majority vote. COCONUT (with CoT as its stage 0) is always trained."""
    num_trajectories: int = 5
    """K, the chains per question of the vote rows (and of navigator_multi, for a comparison at equal K)."""
    cot_vote_temperature: float = 0.7
    """Sampling temperature of cot_vote's chains."""
    cot_vote_top_p: float = 1.0
    """Nucleus mass of cot_vote's chains (1 = plain temperature sampling)."""
    noise_grid: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.4])
    """coconut_noise_vote's candidate noise scales sigma (noise = sigma x the thought's RMS x N(0, 1));
    the one with the best K-vote accuracy on the validation split is used on test."""
    sample_vote_temperatures: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7, 1.0])
    """coconut_sample_vote's candidate temperatures for the answer tokens (top_p: cot_vote_top_p); the one with the
    best K-vote accuracy on the validation split is used on test."""
    navigator_config: str | None = None
    """Navigator preset for the navigator rows; a relative path is read from the demo config's folder.
    None: the built-in demo_navigator.yaml. `coconav demo --navigator-config` overrides it."""
    paper_accuracy: dict[str, float] = field(default_factory=dict)
    """Published test accuracies (%) to print beside the rows of the same name, e.g. the COCONUT paper's Table 1 for
    ProsQA ({cot: 77.5, coconut: 97.0}); written to results.json as `paper`. Empty: no such column."""
    paper_source: str | None = None
    """Where paper_accuracy comes from (e.g. 'arXiv 2412.06769, Table 1, GPT-2')."""
    navigator_multi_config: str | None = None
    """Navigator preset of the navigator_multi row (ppo.num_trajectories > 1; a relative path is read from the
    demo config's folder). Needed when rows include 'navigator_multi'."""

    def __post_init__(self) -> None:
        unknown = [r for r in self.rows if r not in DEMO_ROWS]
        _check(
            not unknown, f"demo.rows: unknown row(s) {', '.join(map(repr, unknown))} (known: {', '.join(DEMO_ROWS)})"
        )
        _check(len(set(self.rows)) == len(self.rows), f"demo.rows lists a row twice: {self.rows}")
        _check("coconut" in self.rows, "demo.rows must include 'coconut' (every other row is compared with it)")
        _check(self.num_trajectories >= 1, f"demo.num_trajectories must be >= 1, got {self.num_trajectories}")
        _check(self.cot_vote_temperature > 0, f"demo.cot_vote_temperature must be > 0, got {self.cot_vote_temperature}")
        _check(0 < self.cot_vote_top_p <= 1, f"demo.cot_vote_top_p must be in (0, 1], got {self.cot_vote_top_p}")
        _check(
            "navigator_multi" not in self.rows or self.navigator_multi_config is not None,
            "demo.rows includes 'navigator_multi': set demo.navigator_multi_config to its navigator preset "
            "(e.g. configs/demo_hard_navigator_multi.yaml)",
        )
        _check(
            bool(self.sample_vote_temperatures) and all(t > 0 for t in self.sample_vote_temperatures),
            f"demo.sample_vote_temperatures must hold temperatures > 0, got {self.sample_vote_temperatures}",
        )
        _check(bool(self.noise_grid), "demo.noise_grid must hold at least one sigma")
        bad = [k for k in self.paper_accuracy if k not in DEMO_ROWS]
        _check(not bad, f"demo.paper_accuracy: unknown row(s) {bad} (known: {', '.join(DEMO_ROWS)})")
        _check(
            all(0 <= v <= 100 for v in self.paper_accuracy.values()),
            f"demo.paper_accuracy: accuracies are percentages in [0, 100], got {self.paper_accuracy}",
        )
        _check(
            all(s >= 0 for s in self.noise_grid), f"demo.noise_grid: every sigma must be >= 0, got {self.noise_grid}"
        )


@dataclass
class RunConfig:
    """One run: model, data, curriculum, optimisation, evaluation, logging."""

    out_dir: str = "runs/default"
    """Run folder: config.yaml, metrics.jsonl, checkpoints/."""
    seed: int = 0
    """Seeds data generation, initialisation and sampling."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    init_from: str | None = None
    """Start from this coconav checkpoint folder (e.g. a CoT run, as the paper does) instead of model.name_or_path."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    navigator: NavigatorConfig | None = None
    """Set to train a navigator on top of the `init_from` COCONUT checkpoint (coconav train dispatches on it)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    """What `coconav demo` compares (rows, K and the vote baselines' settings)."""

    def eval_thoughts(self, stage: int) -> int:
        """Thoughts per question when evaluating a model trained up to `stage`: eval.num_thoughts, else the
        stage's fixed count (never a test example's own number of steps)."""
        return self.eval.num_thoughts if self.eval.num_thoughts is not None else self.curriculum.thoughts_at(stage)

    def __post_init__(self) -> None:
        _check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        if self.navigator is not None:
            _check(self.init_from is not None, "a navigator run needs init_from: the COCONUT checkpoint it steers")
            _check(
                self.ppo.num_trajectories <= self.navigator.max_trajectories,
                f"ppo.num_trajectories ({self.ppo.num_trajectories}) must be <= navigator.max_trajectories "
                f"({self.navigator.max_trajectories})",
            )


# ---------------------------------------------------------------------------------------------
# Loading: dict -> dataclasses with type checks, YAML files, command-line overrides.


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin is dict:
        return f"dict[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting YAML scalars where it is safe."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_type, item = get_args(tp)
        return {_convert(k, key_type, f"{key} (a key)"): _convert(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf  # an int too large for a float
        elif isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # 1e400 reads as inf: no setting means infinity or not-a-number
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints or key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}' (allowed: {', '.join(names)})")
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - fields all have defaults
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain Python data (YAML/JSON ready)."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], parsed value); the value is read as YAML (1e-3, true, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    except (RecursionError, ValueError) as err:  # lists nested hundreds deep, an integer of 4300+ digits
        raise ConfigError(f"override '{key}': the value cannot be read ({_first_line(err)[:80]})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply 'key.sub=value' strings to a nested dict (the types are checked later by from_dict)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


BASE_KEY = "base"
"""The top-level key naming a preset's base preset (a file name, relative to the preset's own folder)."""


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping (PyYAML alone keeps the last silently)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", again)
        self.key, self.first_line = key, first.line + 1


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping naming a key twice: `lr: 1e-3` then `lr: 1e-4` in one
    section is a mistake to show, not a choice to make silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges may be overridden, by design
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if first is not key_node.start_mark:
                raise _DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_mapping(path: Path) -> dict:
    """One YAML file as a mapping (its `base` key untouched); every way it can be malformed is one ConfigError."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except _DuplicateKeyError as err:
        raise ConfigError(
            f"{path}:{err.problem_mark.line + 1}: key {err.key!r} is given twice in one section "
            f"(first on line {err.first_line}): keep one"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply (sections inside sections, hundreds of levels)") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: a value cannot be read: {_first_line(err)}") from None
    if data is None:  # an empty file, or only comments: almost certainly the wrong file
        raise ConfigError(f"{path}: the config file is empty (expected a mapping of config sections such as 'model:')")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


def preset_chain(path: str | Path) -> list[Path]:
    """The preset and the bases it inherits from, the preset first: [demo_full.yaml, demo.yaml]."""
    return [file for file, _ in _read_chain(Path(path))]


def _read_chain(path: Path) -> list[tuple[Path, dict]]:
    """(file, its mapping) for the preset and each base in turn, the preset first."""
    chain = [(path, _read_mapping(path))]
    while True:
        base = _base_of(*chain[-1])
        if base is None:
            return chain
        if base.resolve() in {file.resolve() for file, _ in chain}:
            names = " -> ".join(str(file) for file in [*(f for f, _ in chain), base])
            raise ConfigError(f"{path}: its bases lead back to a preset already read ({names})")
        chain.append((base, _read_mapping(base)))


def _base_of(path: Path, data: dict) -> Path | None:
    """The file a preset's `base` key names (relative to the preset's folder), or None."""
    base = data.get(BASE_KEY)
    if base is None:
        return None
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: '{BASE_KEY}' must name a preset file (e.g. base: demo.yaml), got {base!r}")
    found = path.parent / base
    if not found.is_file():
        raise ConfigError(f"{path}: base preset not found: {found}")
    return found


def read_yaml(path: str | Path) -> dict:
    """Read a YAML preset as one mapping, its base presets merged in; every malformed file is one ConfigError.

    A preset may open with `base: OTHER.yaml` (a path relative to the preset's folder): OTHER is read first
    (itself possibly with a base) and the preset's own keys are merged over it by OmegaConf, section by
    section: a key given here replaces the base's, a key not given keeps the base's, and a list is replaced
    whole. Syntax errors name the line; a key given twice in one section is refused; an empty file (or one with
    only comments) and a top level that is not a mapping are errors naming the file: training silently on the
    defaults would hide a wrong path or a bad save."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    chain = _read_chain(Path(path))
    _, merged = chain[-1]
    merged.pop(BASE_KEY, None)
    for file, data in reversed(chain[:-1]):  # the root's children first, the preset itself last
        data.pop(BASE_KEY)
        try:
            merged = OmegaConf.to_container(OmegaConf.merge(merged, data), resolve=False)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{file}: cannot merge it over its base: {_first_line(err)}") from None
    return merged


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a preset (or the defaults when `path` is None), its base presets merged in, and apply overrides."""
    data = read_yaml(path) if path is not None else {}
    if path is not None:
        try:  # errors in the files themselves name the file and the line of the key
            from_dict(RunConfig, data)
        except ConfigError as err:
            raise ConfigError(f"{_key_place(Path(path), str(err))}: {err}") from None
    data = apply_overrides(data, list(overrides or []))
    return from_dict(RunConfig, data)


def _key_place(path: Path, message: str) -> str:
    """'FILE:LINE' of the key a config error names (its last dotted part): in the preset, else in the first base
    that gives it; the preset alone when not found."""
    for file in preset_chain(path):
        line = _key_line(file, message)
        if line:
            return f"{file}{line}"
    return str(path)


def _key_line(path: Path, message: str) -> str:
    """':LINE' of the key a config error names (its last dotted part), or '' when not found."""
    import re

    found = re.search(r"'?([A-Za-z_][\w.]*)'?(?::| must| is)", message.removeprefix("unknown config key "))
    if not found:
        return ""
    key = found.group(1).split(".")[-1]
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if re.match(rf"\s*{re.escape(key)}\s*:", line) or re.search(rf"[{{,]\s*{re.escape(key)}\s*:", line):
            return f":{number}"
    return ""


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


__all__ = [
    "CurriculumConfig",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "LoraConfig",
    "Mode",
    "NavigatorConfig",
    "PPOConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
]
