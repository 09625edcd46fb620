"""Scores from EleutherAI's lm-evaluation-harness: a coconav checkpoint as the harness model "coconav".

    pip install 'coconav[harness]'
    coconav harness --checkpoint runs/gsm8k/navigator --num-trajectories 5 --fusion majority --limit 200
    coconav harness --checkpoint USER/NAME --data gsm8k_test.jsonl --out harness.json     # a local copy

From Python (importing this module registers the model):

    import coconav.harness, lm_eval
    lm_eval.simple_evaluate(model="coconav", model_args="checkpoint=DIR,num_trajectories=5,fusion=value",
                            tasks=["gsm8k_coconav"], task_manager=coconav.harness.task_manager())

`generate_until` answers through `CoconavModel.generate`: continuous thoughts (the navigator halts and
steers when the checkpoint has one) and K trajectories fused into one answer. The request's context
is the question itself: coconav adds its own prompt markers, as in training. `loglikelihood` scores
the continuation's tokens after a fixed number of thoughts (checkpoints without a navigator; a
navigator's steered thoughts are not replayed); `loglikelihood_rolling` is refused.

The task `gsm8k_coconav` (tasks/gsm8k_coconav.yaml, shipped with the package) scores with coconav's own
GSM8K answer rule, so its exact_match equals `coconav eval`'s accuracy on the same questions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from coconav.common import resolve_device, resolve_dtype
from coconav.data.curriculum import build_prompt, encode_question
from coconav.decode.generate import question_prompts
from coconav.errors import CoconavError, InputError
from coconav.inference import CoconavModel

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # the optional extra is missing: the module still imports (for the CLI's message)
    LM, register_model = object, None

TASK_DIR = str(Path(__file__).resolve().parent / "tasks")
TASK = "gsm8k_coconav"
INSTALL_HINT = "pip install 'coconav[harness]' (lm-evaluation-harness)"


def _register(cls):
    return register_model("coconav")(cls) if register_model is not None else cls


@_register
class CoconavLM(LM):
    """A coconav checkpoint (folder, run folder or Hub id) as an lm-evaluation-harness model.

    model_args: checkpoint=DIR (required), num_trajectories=K or auto (default 1), fusion=majority|value|scorer,
    max_new_tokens (default: the checkpoint's eval.max_new_tokens), batch_size (default: its eval.batch_size),
    device, dtype."""

    def __init__(
        self,
        checkpoint: str | None = None,
        num_trajectories: int | str = 1,
        fusion: str = "majority",
        max_new_tokens: int | None = None,
        batch_size: int | str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        **unused,
    ) -> None:
        super().__init__()
        if not checkpoint:
            raise InputError("the harness model 'coconav' needs model_args checkpoint=DIR (or a Hub id)")
        self.model = CoconavModel.from_pretrained(checkpoint, device=resolve_device(device), dtype=resolve_dtype(dtype))
        self.num_trajectories = num_trajectories if num_trajectories == "auto" else int(num_trajectories)
        self.fusion = fusion
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else self.model.config.eval.max_new_tokens
        given = batch_size not in (None, "auto") and int(batch_size) > 0
        self.batch_size = int(batch_size) if given else self.model.config.eval.batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.model.lm.tokenizer.name_or_path.replace("/", "__")

    # -- generation ------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Answers through CoconavModel.generate, each cut at the request's first `until` string. Requests
        sharing a token budget run in batches of similar prompt length, in the order `coconav eval` batches
        the same questions (stable sort by prompt length), so both see the same batches."""
        questions = [req.args[0] for req in requests]
        budgets = [int((req.args[1] or {}).get("max_gen_toks", self.max_new_tokens)) for req in requests]
        lengths = [len(p) for p in question_prompts(self.model.lm, questions, self.model.plan())]
        order = sorted(range(len(requests)), key=lambda i: (budgets[i], lengths[i]))
        answers = [""] * len(requests)
        start = 0
        while start < len(order):
            idx = order[start : start + self.batch_size]
            idx = [i for i in idx if budgets[i] == budgets[idx[0]]]  # one token budget per batch
            texts = self.model.generate(
                [questions[i] for i in idx],
                max_new_tokens=budgets[idx[0]],
                num_trajectories=self.num_trajectories,
                fusion=self.fusion,
            )
            for i, text in zip(idx, texts):
                answers[i] = cut_at(text, (requests[i].args[1] or {}).get("until") or [])
                self.cache_hook.add_partial("generate_until", requests[i].args, answers[i])
            start += len(idx)
        return answers

    # -- likelihoods -----------------------------------------------------------------------------------

    @torch.no_grad()
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum of log-probabilities of the continuation's tokens after the question and its thoughts,
        whether each of them is the greedy token). Fixed-thought checkpoints only (no navigator)."""
        model, lm = self.model, self.model.lm
        if model.navigator is not None:
            raise NotImplementedError(
                "coconav: loglikelihood of a navigator checkpoint would need its steered "
                "thoughts replayed; use a generate_until task (e.g. gsm8k_coconav)"
            )
        results = []
        for req in requests:
            context, continuation = req.args
            head = build_prompt(
                encode_question(lm.tokenizer, context), model.mode, model.default_thoughts(), lm.special
            )
            if model.mode == "coconut":  # the fixed thoughts, then <eot>, as training lays them out
                head = head + [lm.special.thought] * model.default_thoughts() + [lm.special.eot]
            target = lm.tokenizer(continuation.strip(), add_special_tokens=False)["input_ids"]
            if not target:
                raise InputError(f"empty continuation {continuation!r}")
            ids = torch.tensor([head + target], device=lm.device)
            logits = lm(ids, torch.ones_like(ids), return_logits=True).logits[0, len(head) - 1 : -1].float()
            logprobs = torch.log_softmax(lm.suppress_latent(logits), dim=-1)
            wanted = torch.tensor(target, device=lm.device)
            total = float(logprobs.gather(-1, wanted[:, None]).sum())
            greedy = bool((logprobs.argmax(-1) == wanted).all())
            self.cache_hook.add_partial("loglikelihood", req.args, (total, greedy))
            results.append((total, greedy))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "coconav: loglikelihood_rolling (perplexity of a whole text) is not defined for "
            "a model that answers questions after continuous thoughts"
        )


def cut_at(text: str, until: list[str]) -> str:
    """`text` up to the first of the stop strings (the harness's `until`)."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


def task_manager(include_defaults: bool = False):
    """An lm_eval TaskManager that knows gsm8k_coconav (and, with `include_defaults`, the harness's own
    tasks: indexing those takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=TASK_DIR, include_defaults=include_defaults)


def task_config(data: str | None = None) -> dict:
    """The gsm8k_coconav task as a config dict; `data`: a local GSM8K .jsonl read instead of openai/gsm8k."""
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(TASK_DIR) / f"{TASK}.yaml", resolve_func=True)
    if data is not None:
        if not Path(data).is_file():
            raise InputError(f"--data {data}: no such file (a GSM8K .jsonl with 'question' and 'answer')")
        config.update(
            dataset_path="json",
            dataset_name=None,
            dataset_kwargs={"data_files": {config["test_split"]: str(Path(data).resolve())}},
        )
    return config


def evaluate(
    checkpoint: str,
    data: str | None = None,
    limit: int | None = None,
    num_trajectories: int | str = 1,
    fusion: str = "majority",
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> dict:
    """lm_eval.simple_evaluate on the gsm8k_coconav task; returns its results dict (with per-question samples)."""
    try:
        import lm_eval
    except ImportError:
        raise CoconavError(f"coconav harness needs lm-evaluation-harness: {INSTALL_HINT}") from None
    task = task_config(data)
    model = CoconavLM(
        checkpoint=checkpoint,
        num_trajectories=num_trajectories,
        fusion=fusion,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        device=device,
        dtype=dtype,
    )
    try:
        return lm_eval.simple_evaluate(
            model=model,
            tasks=[task],
            task_manager=task_manager(),
            limit=limit,
            log_samples=True,
            bootstrap_iters=0,
            random_seed=model.model.config.seed,
        )
    except OSError as err:  # the data set cannot be read or downloaded (offline, a bad file)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CoconavError(f"lm-evaluation-harness could not load the data: {first[:200]}") from None
