"""Plumbing shared by the benchmark scripts: progress on stderr, the model-size flags, defaults, JSON output,
device synchronisation and EOS switched off while timing.

The scripts import it as a sibling module (``python benchmarks/bench_x.py`` puts ``benchmarks/`` on
``sys.path``); it holds no measurement logic.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator


def log(msg: str) -> None:
    """Progress goes to stderr: stdout carries the one JSON result."""
    print(msg, file=sys.stderr, flush=True)


def add_model_args(p: argparse.ArgumentParser, defaults: dict, kernels: bool = True) -> None:
    """The randomly initialised scratch-Llama's size flags (and, with ``kernels``, thought rule and attention)."""
    p.add_argument("--hidden-size", type=int, help=f"model width (default {defaults['hidden_size']})")
    p.add_argument("--num-layers", type=int, help=f"decoder layers (default {defaults['num_layers']})")
    p.add_argument("--num-heads", type=int, help=f"attention heads (default {defaults['num_heads']})")
    p.add_argument("--intermediate-size", type=int, help=f"MLP width (default {defaults['intermediate_size']})")
    if kernels:
        p.add_argument(
            "--thought-norm",
            choices=["none", "embedding"],
            default="none",
            help="how a hidden state becomes a thought (default 'none', the paper's rule)",
        )
        p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention kernel (default sdpa)")


def add_machine_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    """Threads, device and seed."""
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    if device:
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0)


def fill_defaults(args: argparse.Namespace, defaults: dict, quick: dict) -> argparse.Namespace:
    """Every flag left unset takes its value from ``quick`` (under --quick) or else ``defaults``."""
    for key, value in {**defaults, **(quick if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def print_result(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> dict:
    """Run the benchmark and print its result as the one JSON object on stdout."""
    result = run(args)
    print(json.dumps(result, indent=2))
    return result


def sync(device: str) -> None:
    """Wait for queued CUDA work, so a timed region ends when its work does (nothing to do on a CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@contextlib.contextmanager
def no_eos(lm) -> Iterator[None]:
    """Make EOS impossible (eos=-1) on a LatentLM, so that every row generates exactly max_new_tokens tokens."""
    saved = lm.special
    lm.special = dataclasses.replace(saved, eos=-1)
    try:
        yield
    finally:
        lm.special = saved
