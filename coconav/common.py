"""Small shared utilities: seeding, ranks, rank-0 printing, a metric logger, atomic file writes.

The logger always writes JSON lines; TensorBoard and Weights & Biases are optional extras used
only when installed and asked for, so library code never branches on "is wandb on".
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coconav.distributed import rank
from coconav.errors import ConfigError, InputError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def print0(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def set_threads(threads: int) -> None:
    """Set torch's CPU threads when asked (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | None = None) -> torch.device:
    """The device to run on: `name` ('cpu', 'cuda', 'cuda:1', 'mps'), or CUDA when available, else the CPU.

    A device that does not exist here is an InputError naming it, not a failure deep inside torch.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {name!r} (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name!r} asked for, but MPS is not available here (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {name!r} (use cpu, cuda, cuda:N or mps)")
    return device


def resolve_dtype(name: str | None = None) -> torch.dtype | None:
    """A weight dtype from its name ('float32', 'bfloat16', 'float16'); None keeps a checkpoint's own."""
    if name is None:
        return None
    if name not in DTYPE_NAMES:
        raise InputError(f"unknown dtype {name!r} (use one of {', '.join(DTYPE_NAMES)})")
    return DTYPE_NAMES[name]


def json_default(value: Any) -> Any:
    """Make tensors and numpy scalars JSON-serialisable."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def replace_dir_atomic(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place; an existing `final_dir` is swapped out first."""
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp_dir, final_dir)


class MetricLogger:
    """Logs dicts of scalars to `metrics.jsonl` (always) and, when asked, TensorBoard / W&B.

    Only rank 0 writes. Keys are namespaced (`train/loss`, `eval/accuracy`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "coconav",
        config: dict | None = None,
        fresh: bool = False,
    ) -> None:
        self.enabled = rank() == 0
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and self.path.exists():  # a new run never appends to a killed run's log
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "log.tensorboard=true needs the tensorboard package: pip install tensorboard"
                ) from None
            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ConfigError("log.wandb=true needs the wandb package: pip install wandb") from None
            self._wandb = wandb_module.init(project=wandb_project, config=config, dir=str(out_dir))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **metrics}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=json_default) + "\n")
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


# Every bar `progress` made that is not closed yet (weak: a finished, dropped bar leaves by itself).
_OPEN_BARS: weakref.WeakSet = weakref.WeakSet()


def progress(iterable=None, *, total: int | None = None, desc: str = "", enabled: bool = True):
    """A tqdm progress bar on rank 0 (a plain iterator elsewhere or when disabled); also a context manager.

    The bar is wiped from the terminal when closed (leave=False). An exception leaves a bar open while
    its traceback holds the loop's frame, so error printers call :func:`close_progress_bars` first."""
    from tqdm.auto import tqdm

    bar = tqdm(iterable, total=total, desc=desc, disable=not enabled or rank() != 0, dynamic_ncols=True, leave=False)
    _OPEN_BARS.add(bar)
    return bar


def close_progress_bars() -> None:
    """Close (and wipe) every bar that `progress` opened, so that the next message starts its own line."""
    for bar in list(_OPEN_BARS):
        bar.close()
        _OPEN_BARS.discard(bar)
