"""Scores from EleutherAI's lm-evaluation-harness: a coconav checkpoint as the harness model "coconav".

    pip install -e '.[harness]'
    coconav harness --checkpoint runs/demo/coconut --limit 200                 # the checkpoint's own test split
    coconav harness --checkpoint runs/prosqa/coconut --data prosqa_test.json --output_path harness --log_samples
    coconav harness --tasks gsm8k_coconav --model_args pretrained=USER/NAME,num_trajectories=5,fusion=value \\
        --output_path harness --log_samples --wandb_args project=coconav

`coconav harness` is lm-eval's own command line (`lm-eval run`): every flag of it (`--tasks`, `--model_args`,
`--include_path`, `--output_path`, `--log_samples`, `--wandb_args`, `--limit`, `--device`, `--batch_size`, ...)
passes through unchanged. On top it imports this module (which registers the model), adds coconav's task folder to
`--include_path`, and fills in what the user left out: `--model coconav`, `--device` (CUDA where it exists, else
the CPU), `--batch_size auto` (the checkpoint's eval.batch_size) and `--tasks` (from `--data`: `coconav_test` for
the checkpoint's test or validation split, `prosqa_coconav` for a ProsQA file, `coconav_data` for any other file
`coconav eval --data` reads). Its own shortcuts become model arguments: `--checkpoint` (pretrained=),
`--revision`, `--num-trajectories`, `--fusion`, `--max-new-tokens`, `--dtype`. Bootstrap error bars are lm-eval's
default (on). With an lm-eval release that reads plugin entry points (declared in pyproject.toml under
`lm_eval.models`), `lm_eval --model coconav ...` works without coconav's command.

From Python (importing this module registers the model):

    import coconav.harness, lm_eval
    lm_eval.simple_evaluate(model="coconav", model_args="pretrained=DIR,num_trajectories=5,fusion=value",
                            tasks=["coconav_test"], task_manager=coconav.harness.task_manager({"pretrained": "DIR"}))

`generate_until` answers through `CoconavModel.generate`: continuous thoughts (the navigator halts and
steers when the checkpoint has one) and K trajectories fused into one answer. The request's context
is the question itself: coconav adds its own prompt markers, as in training. `loglikelihood` scores
the continuation's tokens after a fixed number of thoughts (checkpoints without a navigator; a
navigator's steered thoughts are not replayed); `loglikelihood_rolling` is refused.

The tasks (tasks/*.yaml, shipped with the package) score with coconav's own answer rule (coconav.data.scoring,
GSM8K's numeric rule or ProsQA's text rule by each question's answer type), so their exact_match equals `coconav
eval`'s accuracy on the same questions.
"""

from __future__ import annotations

import argparse
import logging
import sys
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
SPLIT_TASK, DATA_TASK, PROSQA_TASK = "coconav_test", "coconav_data", "prosqa_coconav"
INSTALL_HINT = "pip install -e '.[harness]' (lm-evaluation-harness) in coconav's source folder"
LM_EVAL_DEFAULT_DEVICE = "cuda:0"  # what lm-eval's command line passes when --device is not given
# every model argument CoconavLM takes (batch_size, max_batch_size and device also come from lm-eval's own flags;
# trust_remote_code from --trust_remote_code: coconav runs no code from a checkpoint, so it changes nothing)
MODEL_ARGS = (
    "pretrained",
    "checkpoint",
    "revision",
    "token",
    "cache_dir",
    "num_trajectories",
    "fusion",
    "max_new_tokens",
    "batch_size",
    "max_batch_size",
    "device",
    "dtype",
    "trust_remote_code",
)


def _register(cls):
    return register_model("coconav")(cls) if register_model is not None else cls


def harness_device(name: str | None) -> torch.device:
    """The device of the harness model: `name`, or CUDA where it exists, else the CPU. lm-eval's command line
    passes its default cuda:0 when --device is not given: on a machine without CUDA that means the CPU."""
    if name == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
        print("coconav: warning: CUDA is not available here: the harness model runs on the CPU", file=sys.stderr)
        return torch.device("cpu")
    return resolve_device(name)


def check_model_args(names) -> None:
    """Refuse model arguments the model does not take, in one line (a misspelling such as num_trajectory=5 would
    otherwise run with the default)."""
    unknown = sorted(set(names) - set(MODEL_ARGS))
    if unknown:
        raise InputError(
            f"the harness model 'coconav' has no model argument {', '.join(unknown)} (it takes {', '.join(MODEL_ARGS)})"
        )


@_register
class CoconavLM(LM):
    """A coconav checkpoint (folder, run folder or Hub id) as an lm-evaluation-harness model.

    model_args: pretrained=DIR or a Hub id (required; checkpoint= is an alias), revision, token, cache_dir (Hub ids),
    num_trajectories=K or auto (default 1), fusion=majority|value|scorer, max_new_tokens (default: the checkpoint's
    eval.max_new_tokens), batch_size (default or auto: its eval.batch_size), device (default: CUDA where it exists),
    dtype. Any other argument is refused (a misspelling would otherwise run with the default)."""

    def __init__(
        self,
        pretrained: str | None = None,
        checkpoint: str | None = None,
        revision: str | None = None,
        token: str | None = None,
        cache_dir: str | None = None,
        num_trajectories: int | str = 1,
        fusion: str = "majority",
        max_new_tokens: int | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        check_model_args(unknown)
        if pretrained is not None and checkpoint is not None and str(pretrained) != str(checkpoint):
            raise InputError("give the checkpoint once: pretrained= (checkpoint= is its alias), not both")
        name = pretrained if pretrained is not None else checkpoint
        if not name:
            raise InputError("the harness model 'coconav' needs model_args pretrained=DIR (or a Hub id USER/NAME)")
        self.model = CoconavModel.from_pretrained(
            str(name),
            device=harness_device(device),
            dtype=resolve_dtype(dtype),
            revision=None if revision is None else str(revision),
            token=token,
            cache_dir=cache_dir,
        )
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
        the same questions (stable sort by prompt length), so both see the same batches. A document's
        `answer_type` (number or text; the coconav tasks carry it) is how K trajectories' answers are compared."""
        questions = [req.args[0] for req in requests]
        budgets = [int((req.args[1] or {}).get("max_gen_toks", self.max_new_tokens)) for req in requests]
        types = [(getattr(req, "doc", None) or {}).get("answer_type", "number") for req in requests]
        lengths = [len(p) for p in question_prompts(self.model.lm, questions, self.model.plan())]
        order = sorted(range(len(requests)), key=lambda i: (budgets[i], lengths[i]))
        answers = [""] * len(requests)
        start = 0
        while start < len(order):
            first = order[start]
            # one budget and one answer type per batch: the window's first run of them (a prefix, so none is skipped)
            same = [(budgets[i], types[i]) == (budgets[first], types[first]) for i in order[start:]]
            idx = order[start : start + min(self.batch_size, same.index(False) if False in same else len(same))]
            texts = self.model.generate(
                [questions[i] for i in idx],
                max_new_tokens=budgets[first],
                num_trajectories=self.num_trajectories,
                fusion=self.fusion,
                answer_type=types[first],
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
                "thoughts replayed; use a generate_until task (e.g. coconav_test)"
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


def task_manager(metadata: dict | None = None, include_defaults: bool = False):
    """An lm_eval TaskManager that knows coconav's tasks (and, with `include_defaults`, the harness's own tasks:
    indexing those takes seconds). `metadata` reaches the tasks' loaders: coconav_test needs the checkpoint
    (`pretrained`), coconav_data and prosqa_coconav the data (`data`); lm-eval's command line passes the model
    arguments and --metadata there itself."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=TASK_DIR, include_defaults=include_defaults, metadata=metadata)


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


# -- `coconav harness`: lm-eval's command line ---------------------------------------------------------


def data_task(data: str, steps: str = "notes") -> str:
    """The task `--data` names: coconav_test for 'test' or 'validation' (the checkpoint's split), prosqa_coconav for
    a file whose answers are all text (ProsQA), coconav_data for any other data `coconav eval --data` reads. The
    data is read here, so that a bad file is one line before lm-eval starts."""
    from coconav.data.readers import load_examples

    if data in ("test", "validation"):
        return SPLIT_TASK
    examples = load_examples(data, steps=steps)
    return PROSQA_TASK if examples and all(ex.answer_type == "text" for ex in examples) else DATA_TASK


def config_file(path: str) -> dict:
    """An lm-eval --config YAML file as lm-eval reads it (a bad one is one line)."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    try:
        return EvaluatorConfig.load_yaml_config(path)
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"--config {path}: {err}") from None


def as_dict(value) -> dict:
    """model_args or metadata as lm-eval accepts them in a config file: a mapping or 'key=value,key=value'."""
    from lm_eval.utils import simple_parse_args_string

    return dict(value) if isinstance(value, dict) else simple_parse_args_string(value) if value else {}


def lm_eval_args(args: argparse.Namespace, passed: list[str]):
    """lm-eval's `run` namespace for `coconav harness`: `passed` parsed by lm-eval's own parser, then what the user
    left out filled in (see the module docstring) and coconav's shortcuts (`args`) merged under --model_args and
    --metadata (the user's own --model_args win)."""
    from lm_eval._cli import HarnessCLI

    cli = HarnessCLI()

    def refuse(message: str):  # lm-eval's own refusal (an unknown flag, a bad value), as one line
        raise InputError(f"{message} (coconav harness passes these flags to lm-eval: see 'lm-eval run --help')")

    cli._parser.error = cli._subparsers.choices["run"].error = refuse
    ns = cli._parser.parse_args(["run", *passed])
    # an lm-eval --config file: what it sets is the user's too (lm-eval lets the command line replace it)
    preset = config_file(ns.config) if ns.config else {}
    shortcuts = {
        "pretrained": args.checkpoint,
        "revision": args.revision,
        "num_trajectories": args.num_trajectories,
        "fusion": args.fusion,
        "max_new_tokens": args.max_new_tokens,
        "dtype": args.dtype,
    }
    ns.model_args = {
        **{k: v for k, v in shortcuts.items() if v is not None},
        **as_dict(preset.get("model_args")),
        **(ns.model_args or {}),
    }
    ns.model = ns.model or preset.get("model") or "coconav"
    extra = ns.include_path or preset.get("include_path") or []
    ns.include_path = [TASK_DIR, *(extra if isinstance(extra, list) else [extra])]
    if ns.device is None and "device" not in preset:
        ns.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not hasattr(ns, "batch_size") and "batch_size" not in preset:  # lm-eval's default would be 1; the
        ns.batch_size = "auto"  # checkpoint's own eval.batch_size is what coconav eval uses
    if preset.get("metadata") and ns.metadata is None:
        ns.metadata = as_dict(preset["metadata"])
    data = args.data if args.data is not None else (None if ns.tasks or ns.config else "test")
    if data is not None:  # what the tasks' loaders read (tasks/utils.py); the user's own --metadata wins
        ours = {"split": data} if data in ("test", "validation") else {"data": data}
        ns.metadata = {**ours, **(ns.metadata or {})}
    if not ns.tasks and not ns.config:
        ns.tasks = [data_task(data)]
    return cli, ns


class _CurrentStderr:
    """A stream that writes to whatever sys.stderr is at the time (as logging's last-resort handler does)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_CURRENT_STDERR = _CurrentStderr()


def run(args: argparse.Namespace, passed: list[str]) -> int:
    """`coconav harness`: lm-eval's `run` with the model registered, coconav's tasks included and the defaults
    above; lm-eval prints its table and writes --output_path itself."""
    try:
        import lm_eval  # noqa: F401
        from lm_eval.utils import setup_logging
    except ImportError:
        raise CoconavError(f"coconav harness needs lm-evaluation-harness: {INSTALL_HINT}") from None
    cli, ns = lm_eval_args(args, passed)
    if ns.model == "coconav":  # before lm-eval starts: a misspelt argument is one line, with nothing loaded
        check_model_args(ns.model_args)
    setup_logging()  # as lm-eval's own command line does (--verbosity and LMEVAL_LOG_LEVEL apply)
    for handler in logging.getLogger("lm_eval").handlers:  # its handler holds the stderr of its first call:
        if type(handler) is logging.StreamHandler:  # follow sys.stderr instead, wherever it points now
            handler.setStream(_CURRENT_STDERR)
    try:
        cli.execute(ns)
    except OSError as err:  # the data set cannot be read or downloaded (offline, a bad file)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CoconavError(f"lm-evaluation-harness could not load the data: {first[:200]}") from None
    return 0
