"""The `coconav` command line.

    coconav demo --out runs/demo                       # the main job: train and compare on a built-in task
    coconav train --config configs/demo.yaml [key.sub=value ...] [--resume RUN]
    coconav eval --checkpoint RUN/checkpoints/stage-7 --data test [--out results.json] [--device cuda --dtype bfloat16]
    coconav eval --checkpoint RUN/navigator --num-trajectories 5|auto --fusion majority|value|scorer [--abstain-below 0.6]
    coconav eval --checkpoint RUN/coconut --sweep-thoughts 0-4 [--data validation|test]   # the compute frontier
    coconav generate --checkpoint DIR "3 + 4 * 2 ?" [--show-thoughts] [--device cpu]
    coconav explore --checkpoint DIR [--data test] [--num-trajectories K --fusion majority] --port 8765 | --static explorer.html
    coconav explore --checkpoint DIR --data prosqa/test.json --search-frontier frontier.json
    coconav push --checkpoint DIR --repo-id USER/NAME [--private] [--with-optimizer] [--dry-run]
    coconav harness --checkpoint DIR [--data test|FILE] [--num-trajectories K] [any lm-eval run flag: --tasks,
                    --limit N, --output_path DIR, --log_samples, --wandb_args ..., --model_args ...]
    (--checkpoint also takes a Hub id USER/NAME: loaded through the Hub cache, HF_HUB_OFFLINE=1 honoured;
     eval and generate take --revision, --token and --cache-dir for it)
    coconav doctor --gpu --out runs/doctor.json    # checks the GPU path: CUDA tests, demo, Llama-3-8B-shaped step
    coconav doctor --tiny --out runs/doctor.json   # the same stages on a tiny config on the CPU (CI)
    coconav --version;  coconav COMMAND --help   (defaults and an example for each command)

Bad input (a malformed file, an unknown config key, a missing checkpoint, an empty question, a flag
out of range such as --batch-size 0) ends with one line `coconav: error: ...` and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from coconav import __version__
from coconav.errors import CheckpointError, CoconavError, InputError


def _device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available, else the CPU)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's own dtype)")


def _hub_arguments(p: argparse.ArgumentParser) -> None:
    """A --checkpoint given as a Hub id USER/NAME: which revision, with which token, from which cache."""
    p.add_argument("--revision", default=None, help="a Hub id's branch, tag or commit (default: main)")
    p.add_argument(
        "--token", default=None, help="a Hub token for a private or gated repo (default: the logged-in one, HF_TOKEN)"
    )
    p.add_argument("--cache-dir", default=None, help="the Hub cache to download into and read (default: HF_HUB_CACHE)")


class UsageError(CoconavError):
    """A command line argparse refused (unknown flag, missing argument, a value out of range)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: raised as UsageError, printed by main() like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]  # raises instead of exiting
        # "argument --batch-size: must be >= 1, got 0" -> "--batch-size must be >= 1, got 0"
        found = re.fullmatch(r"argument (\S+?)(?:/\S+)?: (must be .*)", message)
        if found:
            message = f"{found.group(1)} {found.group(2)}"
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless it is None/False: the help text says what that means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # `is`, not `in`: 0 == False, and a default of 0 is worth showing.
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not hidden and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


# The largest count a flag takes (questions, tokens, thoughts, batch size): torch's int32 range, far beyond any
# model's context, so that a huge number is refused here rather than overflowing a tensor size later.
LARGEST_COUNT = 2**31 - 1
SWEEP_LIMIT = 4096  # --sweep-thoughts evaluates every count A..B in turn: more would be thousands of evaluations


def _cut(text: str) -> str:
    """A value as an error message shows it: at most 40 characters."""
    return text if len(text) <= 40 else text[:37] + "..."


def _shown(text: str) -> str:
    """A value as an error message quotes it: repr, at most 40 characters."""
    return repr(_cut(text))


def _integer(low: int, high: int = LARGEST_COUNT) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (so 0 can never be read as "use the default", and a
    number too large for the tensors it sizes is refused before anything runs)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # not a number, "1e400", or more than 4300 digits
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {_shown(text)}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {_cut(text.strip())}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {_cut(text.strip())}")
        return value

    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


def _finite(text: str) -> float:
    """An argparse type: a finite number. nan (which every range check lets through) and inf ("1e400" reads as
    inf) are refused here; each flag's range is checked where its meaning is known (e.g. against the
    checkpoint's navigator)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {_shown(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {_shown(text)}")
    return value


_finite.__name__ = "finite number"


POSITIVE, NON_NEGATIVE = _integer(1), _integer(0)


def parse_thought_range(text: str) -> list[int]:
    """--sweep-thoughts: 'A-B' (or 'A') with whole numbers 0 <= A <= B <= SWEEP_LIMIT -> [A, ..., B]."""
    found = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", str(text))
    if found is None:
        raise InputError(
            f"--sweep-thoughts must be A-B with whole numbers 0 <= A <= B (e.g. 0-4), got {_shown(str(text))}"
        )
    bounds = [found.group(1), found.group(2) or found.group(1)]
    # the length first: int() of a 5000-digit string fails, and a huge range would fill the memory
    if any(len(b.lstrip("0")) > len(str(SWEEP_LIMIT)) or int(b) > SWEEP_LIMIT for b in bounds):
        raise InputError(f"--sweep-thoughts A-B: B must be <= {SWEEP_LIMIT} thoughts, got {_shown(str(text))}")
    low, high = map(int, bounds)
    if low > high:
        raise InputError(f"--sweep-thoughts A-B needs A <= B, got {text!r} (write {high}-{low})")
    return list(range(low, high + 1))


def parse_trajectories(text: str | int | None) -> int | str:
    """--num-trajectories: an integer or "auto" (None: 1)."""
    if text is None:
        return 1
    if isinstance(text, int) or text == "auto":
        return text
    try:  # the range is the navigator's (1..navigator.max_trajectories), checked with the checkpoint
        return int(text)
    except ValueError:  # not a number, or more than 4300 digits
        raise InputError(f"--num-trajectories must be an integer or 'auto', got {_shown(str(text))}") from None


EXAMPLES = {
    "train": "example:\n  coconav train --config configs/task_arithmetic_coconut.yaml train.batch_size=64 out_dir=runs/arith",
    "eval": "example:\n  coconav eval --checkpoint runs/demo/coconut --data test --max-questions 100 --out runs/demo/test.json",
    "generate": 'example:\n  coconav generate --checkpoint runs/demo/coconut "3 + 4 * 2 ?" --show-thoughts',
    "explore": "example:\n  coconav explore --checkpoint runs/demo/navigator --static runs/demo/explorer.html",
    "demo": "example:\n  coconav demo --out runs/demo --no-navigator",
    "push": "example:\n  coconav push --checkpoint runs/demo/coconut --repo-id USER/coconut-arithmetic --dry-run",
    "doctor": "example:\n  coconav doctor --gpu --out runs/doctor.json\n"
    "Stages: gpu_tests (pytest -m gpu), demo (CUDA, bf16), train_step (Llama-3-8B shape, LoRA, checkpointing),\n"
    "rollout (the navigator at K = 5), decode (compiled against HF generate); docs/guides/scale.md",
    "harness": "example:\n  coconav harness --checkpoint runs/demo/coconut --limit 200 --output_path harness --log_samples\n"
    "Every other flag is lm-eval's (`lm-eval run --help`) and passes through unchanged: --tasks, --model_args,\n"
    "--include_path, --output_path, --log_samples, --wandb_args, --limit, --device, --batch_size, --seed, ...",
}


def _command(sub, name: str, help: str, allow_abbrev: bool = True) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=EXAMPLES[name],
        formatter_class=_HelpFormatter,
        allow_abbrev=allow_abbrev,
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="coconav",
        description="Continuous-thought reasoning (COCONUT) with a PPO navigator.",
        epilog="Run `coconav COMMAND --help` for a command's flags, defaults and an example.",
    )
    parser.add_argument("--version", action="version", version=f"coconav {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,eval,generate,explore,demo,push,harness,doctor}"
    )

    p = _command(sub, "train", "train a latent LM through the curriculum (or a baseline)")
    p.add_argument("--config", help="a YAML preset (configs/*.yaml)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder at its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")

    p = _command(sub, "eval", "evaluate a checkpoint")
    p.add_argument("--checkpoint", help="a checkpoint folder (or a run folder: its latest)")
    p.add_argument(
        "--zero-shot",
        metavar="MODEL",
        help="instead of a checkpoint: an untouched pretrained model "
        "(hub id, folder or smollm2-135m), prompted zero-shot with its chat template",
    )
    p.add_argument(
        "--max-new-tokens",
        type=POSITIVE,
        default=None,
        help="answer tokens at most (default: the checkpoint's eval.max_new_tokens; 256 with --zero-shot)",
    )
    p.add_argument(
        "--data",
        default="test",
        help="'test' or 'validation' (the checkpoint's task splits), "
        "or a data file / hub id (.jsonl GSM8K, .txt GSM8k-Aug, .json COCONUT, openai/gsm8k:test, "
        "whynlp/gsm8k-aug:test)",
    )
    p.add_argument(
        "--num-thoughts", type=NON_NEGATIVE, default=None, help="thoughts per question (default: the last stage's)"
    )
    p.add_argument(
        "--max-questions", type=POSITIVE, default=None, help="evaluate only the first N questions (default: all)"
    )
    p.add_argument(
        "--batch-size",
        type=POSITIVE,
        default=None,
        help="questions per generation batch (default: the checkpoint's eval.batch_size; 32 zero-shot)",
    )
    p.add_argument("--no-steering", action="store_true", help="navigator checkpoints: halting only, unsteered thoughts")
    p.add_argument(
        "--no-memory", action="store_true", help="navigator checkpoints: episodic, group and persistent memory off"
    )
    p.add_argument(
        "--num-trajectories",
        default=None,
        metavar="K|auto",
        help="navigator checkpoints: K trajectories per question fused into one answer (default 1; "
        "auto: the K-selector under navigator.trajectories_budget)",
    )
    p.add_argument(
        "--trajectories-budget",
        type=_finite,
        default=None,
        metavar="B",
        help="with --num-trajectories auto: the mean K per question to spend (default: the checkpoint's "
        "navigator.trajectories_budget)",
    )
    p.add_argument("--fusion", default="majority", help="with K > 1: majority, value or scorer (default majority)")
    p.add_argument(
        "--halt-threshold",
        type=_finite,
        default=None,
        metavar="P",
        help="navigator checkpoints: halt where the halting probability exceeds P, at any K (default: the "
        "checkpoint's navigator.halt_threshold at K = 1, chosen for its pass_budget when it had one, "
        "and its multi_halt_threshold, when set, at K != 1)",
    )
    p.add_argument(
        "--abstain-below",
        type=_finite,
        default=0.0,
        metavar="A",
        help="with K > 1: also report coverage and accuracy answering only where >= A of the trajectories agree",
    )
    p.add_argument(
        "--sweep-thoughts",
        default=None,
        metavar="A-B",
        help="evaluate the checkpoint's COCONUT LM at every fixed thought count A..B (a navigator is "
        "ignored) and report the compute frontier: points, envelope, oracle curves, and the length rule "
        "(one budget per difficulty or question-length bin, fitted on the run's validation split)",
    )
    p.add_argument("--out", help="write the JSON report here (default: print the summary)")
    _hub_arguments(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the prefill and the thought/token step (static KV cache); pays on long "
        "evaluations, compiling takes tens of seconds (default off)",
    )
    _device_arguments(p)

    p = _command(sub, "generate", "answer one question")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (or a run folder: its latest)")
    p.add_argument("question", help="the question text")
    p.add_argument("--num-thoughts", type=NON_NEGATIVE, default=None, help="thoughts (default: the last stage's)")
    p.add_argument(
        "--show-thoughts", action="store_true", help="print the thought count and each thought's nearest tokens"
    )
    p.add_argument("--top-k", type=POSITIVE, default=5, help="nearest tokens shown per thought")
    p.add_argument(
        "--max-new-tokens",
        type=POSITIVE,
        default=None,
        help="answer tokens at most (default: the checkpoint's eval.max_new_tokens)",
    )
    _hub_arguments(p)
    _device_arguments(p)

    p = _command(sub, "explore", "a web page (127.0.0.1) or one HTML file showing what the thoughts do")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (or a run folder: its latest)")
    p.add_argument(
        "--data", default="test", help="'test' or 'validation' (the checkpoint's task splits), or a data file"
    )
    p.add_argument(
        "--num-trajectories",
        type=POSITIVE,
        default=1,
        help="trajectories per question (K > 1: a navigator checkpoint, 1..its max_trajectories)",
    )
    p.add_argument("--fusion", default="majority", help="with K > 1: majority, value or scorer (default majority)")
    p.add_argument(
        "--max-questions", type=POSITIVE, default=None, help="explore only the first N questions (default: all)"
    )
    p.add_argument(
        "--port", type=_integer(0, 65535), default=8765, help="serve on http://127.0.0.1:PORT (0: any free port)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument(
        "--trusted-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host header the server answers besides localhost, 127.0.0.1, [::1] and --host (repeatable)",
    )
    p.add_argument(
        "--static", metavar="OUT.html", default=None, help="write one self-contained HTML file instead of serving"
    )
    p.add_argument(
        "--search-frontier",
        metavar="OUT.json",
        default=None,
        help="write the probability on frontier nodes, by thought and distance (graph questions, e.g. ProsQA)",
    )

    p = _command(sub, "demo", "train no-CoT, CoT and COCONUT on a built-in task and compare them")
    p.add_argument("--out", default="runs/demo", help="output folder (results.json, plots)")
    p.add_argument("--seed", type=_integer(0, 2**32 - 1), default=0, help="seed of data, initialisation and sampling")
    p.add_argument(
        "--config", default=None, help="preset to use instead of the built-in demo (e.g. configs/demo_full.yaml)"
    )
    p.add_argument(
        "--navigator-config", default=None, help="navigator preset (default: the built-in demo_navigator.yaml)"
    )
    p.add_argument("--no-navigator", action="store_true", help="skip the navigator (no-CoT, CoT and COCONUT only)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")

    p = _command(
        sub, "push", "upload a checkpoint (safetensors, metadata, tokenizer, navigator, model card) to the Hub"
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (or a run folder: its latest)")
    p.add_argument("--repo-id", required=True, metavar="USER/NAME", help="the Hub model repo (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--with-optimizer", action="store_true", help="also upload the trainer state (optimizer, RNG)")
    p.add_argument("--dry-run", action="store_true", help="print the files that would be uploaded and stop")

    p = _command(
        sub,
        "harness",
        "score a checkpoint with lm-evaluation-harness (lm-eval's own command line, model coconav)",
        allow_abbrev=False,  # a prefix of one of lm-eval's flags must reach lm-eval, not match one of these
    )
    p.add_argument("--checkpoint", help="a checkpoint folder, a run folder (its latest) or a Hub id (pretrained=)")
    p.add_argument(
        "--data",
        default=None,
        metavar="test|validation|FILE",
        help="the questions: the checkpoint's test or validation split (task coconav_test; the default without "
        "--tasks), a ProsQA .json (prosqa_coconav) or any file coconav eval reads (coconav_data)",
    )
    p.add_argument("--revision", default=None, help="a Hub id's branch, tag or commit (revision=)")
    p.add_argument(
        "--num-trajectories",
        default=None,
        metavar="K|auto",
        help="navigator checkpoints: K trajectories per question fused into one answer (num_trajectories=; default 1)",
    )
    p.add_argument("--fusion", default=None, help="with K > 1: majority, value or scorer (fusion=; default majority)")
    p.add_argument(
        "--max-new-tokens", type=POSITIVE, default=None, help="answer tokens at most (default: the checkpoint's)"
    )
    p.add_argument(
        "--dtype", default=None, help="float32, bfloat16 or float16 (dtype=; default: the checkpoint's own dtype)"
    )

    p = _command(sub, "doctor", "check the GPU path in one command and write one JSON report")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--gpu",
        action="store_true",
        help="every stage on the CUDA GPU at the presets' shapes (meant to take <= 8 minutes on one H100)",
    )
    mode.add_argument("--tiny", action="store_true", help="every stage on a tiny config on the CPU (what CI runs)")
    p.add_argument("--out", default="runs/doctor.json", help="the JSON report")
    p.add_argument(
        "--stages",
        default=None,
        metavar="A,B",
        help="only these stages, among gpu_tests, demo, train_step, rollout, decode (default: all)",
    )
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from coconav.common import check_output_folder
    from coconav.config import load_config
    from coconav.recipes import train_coconut

    if args.resume and not args.config:
        config_path = Path(args.resume) / "config.yaml"
        if not config_path.is_file():
            raise CoconavError(f"{args.resume} has no config.yaml: is it a coconav run folder?")
        cfg = load_config(config_path, args.overrides)
    else:
        if not args.config:
            raise CoconavError("train needs --config FILE.yaml (or --resume RUN)")
        cfg = load_config(args.config, args.overrides)
    # inputs before the run folder: nothing is written for a run that cannot start
    check_output_folder(args.resume or cfg.out_dir, "--resume" if args.resume else "out_dir")
    if cfg.navigator is not None:
        from coconav.io.checkpoint import latest_checkpoint

        try:
            latest_checkpoint(cfg.init_from)
        except CheckpointError as err:
            raise CheckpointError(f"init_from: {err} (the COCONUT checkpoint the navigator steers)") from None
        from coconav.recipes import train_navigator

        train_navigator.train(cfg, resume=args.resume)
    else:
        train_coconut.train(cfg, resume=args.resume)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from coconav.common import check_output_file
    from coconav.recipes import evaluate_checkpoint

    if args.out:  # before the evaluation: a path that cannot be written would waste it
        check_output_file(args.out, "--out")
    if args.sweep_thoughts is not None:
        clash = [
            flag
            for flag, given in (
                ("--zero-shot", args.zero_shot),
                ("--num-thoughts", args.num_thoughts is not None),
                ("--num-trajectories", args.num_trajectories is not None),
            )
            if given
        ]
        if clash or not args.checkpoint:
            raise CoconavError("--sweep-thoughts needs --checkpoint DIR" + (f" and no {clash[0]}" if clash else ""))
        report = evaluate_checkpoint.run_sweep(
            args.checkpoint,
            parse_thought_range(args.sweep_thoughts),
            args.data,
            max_questions=args.max_questions,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            dtype=args.dtype,
            **_hub(args),
        )
    elif args.zero_shot:
        if any(_hub(args).values()):
            raise CoconavError("--revision, --token and --cache-dir go with --checkpoint USER/NAME, not --zero-shot")
        if args.data in ("test", "validation"):
            raise CoconavError("--zero-shot needs --data FILE (there is no checkpoint config to take splits from)")
        report = evaluate_checkpoint.run_zero_shot(
            args.zero_shot,
            args.data,
            args.max_questions,
            args.batch_size or 32,
            args.max_new_tokens or 256,
            device=args.device,
            dtype=args.dtype,
        )
    elif args.checkpoint:
        report = evaluate_checkpoint.run(
            args.checkpoint,
            args.data,
            num_thoughts=args.num_thoughts,
            max_questions=args.max_questions,
            batch_size=args.batch_size,
            steer=not args.no_steering,
            memory=not args.no_memory,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            dtype=args.dtype,
            num_trajectories=parse_trajectories(args.num_trajectories),
            fusion=args.fusion,
            abstain_below=args.abstain_below,
            compile=args.compile,
            trajectories_budget=args.trajectories_budget,
            halt_threshold=args.halt_threshold,
            **_hub(args),
        )
    else:
        raise CoconavError("eval needs --checkpoint DIR or --zero-shot MODEL")
    if args.out:
        _write_report(args.out, report)
    summary = {k: v for k, v in report.items() if k != "questions"}
    print(json.dumps(summary, indent=2))
    return 0


def _write_report(path: str, report: dict) -> None:
    """--out: the JSON report, its missing folders made; a failure (the disk full, the folder gone since the
    check) is one line, and leaves no temporary file."""
    from coconav.common import write_json_atomic

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, report)
    except OSError as err:
        raise CoconavError(f"--out {path}: cannot write the report ({err.strerror or err})") from None
    print(f"wrote {path}")


def _cmd_generate(args: argparse.Namespace) -> int:
    from coconav.recipes import evaluate_checkpoint

    print(
        evaluate_checkpoint.generate_text(
            args.checkpoint,
            args.question,
            num_thoughts=args.num_thoughts,
            show_thoughts=args.show_thoughts,
            top_k=args.top_k,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            dtype=args.dtype,
            **_hub(args),
        )
    )
    return 0


def _hub(args: argparse.Namespace) -> dict:
    """--revision, --token, --cache-dir: how a Hub id is fetched (CoconavModel.from_pretrained)."""
    return {"revision": args.revision, "token": args.token, "cache_dir": args.cache_dir}


def _cmd_explore(args: argparse.Namespace) -> int:
    from coconav.recipes import explore

    explore.run(
        args.checkpoint,
        args.data,
        num_trajectories=args.num_trajectories,
        port=args.port,
        static=args.static,
        max_questions=args.max_questions,
        fusion=args.fusion,
        host=args.host,
        trusted=args.trusted_host,
        search=args.search_frontier,
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from coconav.common import check_output_folder
    from coconav.config import read_yaml
    from coconav.recipes import demo

    check_output_folder(args.out, "--out")
    if args.navigator_config:  # read after the COCONUT training otherwise: a wrong path would waste it
        read_yaml(args.navigator_config)
    demo.run(
        out=args.out,
        seed=args.seed,
        config=args.config,
        overrides=args.overrides,
        navigator=args.navigator_config,
        with_navigator=not args.no_navigator,
    )
    return 0


def _quiet_transformers() -> None:
    """transformers' own bars ('Loading weights', 'Writing model shards') would clutter every command."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _close_progress_bars() -> None:
    """A bar left open by the exception would otherwise share its line with the error message."""
    from coconav.common import close_progress_bars

    close_progress_bars()


def _cmd_push(args: argparse.Namespace) -> int:
    from coconav.io.checkpoint import latest_checkpoint
    from coconav.io.hub import looks_like_repo_id, portability_warnings, push, upload_files

    if not Path(args.checkpoint).exists():  # push reads local folders only, never a Hub id
        raise CheckpointError(f"checkpoint folder not found: {args.checkpoint}")
    folder = latest_checkpoint(args.checkpoint)
    if not looks_like_repo_id(args.repo_id):
        raise CoconavError(f"--repo-id must be 'owner/name' (letters, digits, '.', '_', '-'), got {args.repo_id!r}")
    files = upload_files(folder, with_optimizer=args.with_optimizer)
    for warning in portability_warnings(folder):
        print(f"coconav: warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print(f"would upload {len(files)} files from {folder} to {args.repo_id}{' (private)' if args.private else ''}:")
        print("\n".join(f"  {f}" for f in files))
        return 0
    url = push(folder, args.repo_id, private=args.private, with_optimizer=args.with_optimizer)
    print(f"pushed {len(files)} files from {folder} to {url}")
    return 0


def _cmd_harness(args: argparse.Namespace, passed: list[str]) -> int:
    from coconav.harness import run

    if args.num_trajectories is not None:
        parse_trajectories(args.num_trajectories)  # an integer or auto, before lm-eval starts
    return run(args, passed)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from coconav.common import check_output_file
    from coconav.recipes import doctor

    check_output_file(args.out, "--out")
    report = doctor.run(gpu=args.gpu, out=args.out, stages=args.stages)
    return 0 if report["ok"] else 1


COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "generate": _cmd_generate,
    "explore": _cmd_explore,
    "demo": _cmd_demo,
    "push": _cmd_push,
    "doctor": _cmd_doctor,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = _parser()
        args, passed = parser.parse_known_args(argv)
        _quiet_transformers()
        if args.command == "harness":  # the flags coconav does not know are lm-eval's, passed through as given
            return _cmd_harness(args, passed)
        if passed:
            parser.error(f"unrecognized arguments: {' '.join(passed)}")
        return COMMANDS[args.command](args)
    except CoconavError as err:
        _close_progress_bars()
        print(f"coconav: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("coconav: interrupted (completed checkpoints are kept; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
