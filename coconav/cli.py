"""The `coconav` command line.

    coconav demo --out runs/demo                       # the main job: train and compare on a built-in task
    coconav train --config configs/demo.yaml [key.sub=value ...] [--resume RUN]
    coconav eval --checkpoint RUN/checkpoints/stage-7 --data test [--out results.json] [--device cuda --dtype bfloat16]
    coconav eval --checkpoint RUN/navigator --num-trajectories 5|auto --fusion majority|value|scorer [--abstain-below 0.6]
    coconav eval --checkpoint RUN/coconut --sweep-thoughts 0-4 [--data validation|test]   # the compute frontier
    coconav generate --checkpoint DIR "3 + 4 * 2 ?" [--show-thoughts] [--device cpu]
    coconav explore --checkpoint DIR [--data test] [--num-trajectories K --fusion majority] --port 8765 | --static explorer.html
    coconav push --checkpoint DIR --repo-id USER/NAME [--private] [--with-optimizer] [--dry-run]
    coconav harness --checkpoint DIR [--data gsm8k_test.jsonl] [--limit N] [--num-trajectories K --fusion majority]
    (--checkpoint also takes a Hub id USER/NAME: loaded through the Hub cache, HF_HUB_OFFLINE=1 honoured)
    coconav --version;  coconav COMMAND --help   (defaults and an example for each command)

Bad input (a malformed file, an unknown config key, a missing checkpoint, an empty question, a flag
out of range such as --batch-size 0) ends with one line `coconav: error: ...` and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
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


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low (so 0 can never be read as "use the default")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


POSITIVE, NON_NEGATIVE = _at_least(1), _at_least(0)


def parse_thought_range(text: str) -> list[int]:
    """--sweep-thoughts: 'A-B' (or 'A') with whole numbers 0 <= A <= B -> [A, ..., B]."""
    found = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if found is None:
        raise InputError(f"--sweep-thoughts must be A-B with whole numbers 0 <= A <= B (e.g. 0-4), got {text!r}")
    low = int(found.group(1))
    high = int(found.group(2)) if found.group(2) is not None else low
    if low > high:
        raise InputError(f"--sweep-thoughts A-B needs A <= B, got {text!r} (write {high}-{low})")
    return list(range(low, high + 1))


def parse_trajectories(text: str | int | None) -> int | str:
    """--num-trajectories: an integer or "auto" (None: 1)."""
    if text is None:
        return 1
    if isinstance(text, int) or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--num-trajectories must be an integer or 'auto', got {text!r}") from None


EXAMPLES = {
    "train": "example:\n  coconav train --config configs/task_arithmetic_coconut.yaml train.batch_size=64 out_dir=runs/arith",
    "eval": "example:\n  coconav eval --checkpoint runs/demo/coconut --data test --max-questions 100 --out runs/demo/test.json",
    "generate": 'example:\n  coconav generate --checkpoint runs/demo/coconut "3 + 4 * 2 ?" --show-thoughts',
    "explore": "example:\n  coconav explore --checkpoint runs/demo/navigator --static runs/demo/explorer.html",
    "demo": "example:\n  coconav demo --out runs/demo --no-navigator",
    "push": "example:\n  coconav push --checkpoint runs/demo/coconut --repo-id USER/coconut-arithmetic --dry-run",
    "harness": "example:\n  coconav harness --checkpoint runs/gsm8k/navigator --num-trajectories 5 --limit 200 --out harness.json",
}


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=EXAMPLES[name],
        formatter_class=_HelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="coconav",
        description="Continuous-thought reasoning (COCONUT) with a PPO navigator.",
        epilog="Run `coconav COMMAND --help` for a command's flags, defaults and an example.",
    )
    parser.add_argument("--version", action="version", version=f"coconav {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,eval,generate,explore,demo,push,harness}"
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
        type=float,
        default=None,
        metavar="B",
        help="with --num-trajectories auto: the mean K per question to spend (default: the checkpoint's "
        "navigator.trajectories_budget)",
    )
    p.add_argument("--fusion", default="majority", help="with K > 1: majority, value or scorer (default majority)")
    p.add_argument(
        "--halt-threshold",
        type=float,
        default=None,
        metavar="P",
        help="navigator checkpoints: halt where the halting probability exceeds P, at any K (default: the "
        "checkpoint's navigator.halt_threshold at K = 1, chosen for its pass_budget when it had one, "
        "and its multi_halt_threshold, when set, at K != 1)",
    )
    p.add_argument(
        "--abstain-below",
        type=float,
        default=0.0,
        metavar="A",
        help="with K > 1: also report coverage and accuracy answering only where >= A of the trajectories agree",
    )
    p.add_argument(
        "--sweep-thoughts",
        default=None,
        metavar="A-B",
        help="evaluate the checkpoint's COCONUT LM at every fixed thought count A..B (a navigator is "
        "ignored) and report the compute frontier: points, envelope, oracle curves",
    )
    p.add_argument("--out", help="write the JSON report here (default: print the summary)")
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
    p.add_argument("--port", type=NON_NEGATIVE, default=8765, help="serve on http://127.0.0.1:PORT (0: any free port)")
    p.add_argument(
        "--static", metavar="OUT.html", default=None, help="write one self-contained HTML file instead of serving"
    )

    p = _command(sub, "demo", "train no-CoT, CoT and COCONUT on a built-in task and compare them")
    p.add_argument("--out", default="runs/demo", help="output folder (results.json, plots)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of data, initialisation and sampling")
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

    p = _command(sub, "harness", "score a checkpoint on GSM8K with lm-evaluation-harness (task gsm8k_coconav)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, a run folder (its latest) or a Hub id")
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE.jsonl",
        help="a local GSM8K .jsonl (question, answer) instead of openai/gsm8k's test split from the Hub",
    )
    p.add_argument("--limit", type=POSITIVE, default=None, help="score only the first N questions (default: all)")
    p.add_argument(
        "--num-trajectories",
        default="1",
        metavar="K|auto",
        help="navigator checkpoints: K trajectories per question fused into one answer",
    )
    p.add_argument("--fusion", default="majority", help="with K > 1: majority, value or scorer")
    p.add_argument("--batch-size", type=POSITIVE, default=None, help="questions per batch (default: the checkpoint's)")
    p.add_argument(
        "--max-new-tokens", type=POSITIVE, default=None, help="answer tokens at most (default: the checkpoint's)"
    )
    p.add_argument("--out", help="write the harness results and per-question samples (JSON) here")
    _device_arguments(p)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
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
    if cfg.navigator is not None:
        from coconav.recipes import train_navigator

        train_navigator.train(cfg, resume=args.resume)
    else:
        train_coconut.train(cfg, resume=args.resume)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from coconav.recipes import evaluate_checkpoint

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
        )
    elif args.zero_shot:
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
        )
    else:
        raise CoconavError("eval needs --checkpoint DIR or --zero-shot MODEL")
    if args.out:
        from coconav.common import write_json_atomic

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, report)
        print(f"wrote {args.out}")
    summary = {k: v for k, v in report.items() if k != "questions"}
    print(json.dumps(summary, indent=2))
    return 0


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
        )
    )
    return 0


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
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from coconav.recipes import demo

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
    from coconav.checkpoint import latest_checkpoint
    from coconav.hub import looks_like_repo_id, portability_warnings, push, upload_files

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


def _cmd_harness(args: argparse.Namespace) -> int:
    from coconav.common import write_json_atomic
    from coconav.harness import evaluate

    results = evaluate(
        args.checkpoint,
        data=args.data,
        limit=args.limit,
        num_trajectories=parse_trajectories(args.num_trajectories),
        fusion=args.fusion,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, {"results": results["results"], "samples": results.get("samples", {})})
        print(f"wrote {args.out}")
    print(json.dumps(results["results"], indent=2, default=str))
    return 0


COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "generate": _cmd_generate,
    "explore": _cmd_explore,
    "demo": _cmd_demo,
    "push": _cmd_push,
    "harness": _cmd_harness,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = _parser().parse_args(argv)
        _quiet_transformers()
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
