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
import tempfile
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
    """Write JSON through a temporary file and a rename, so readers never see half a file; a failed write
    leaves no temporary file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _nearest_existing(path: Path) -> Path:
    """`path` itself or its closest ancestor that exists (the folder missing parents would be created in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_file(path: str | Path, flag: str, example: str = "report.json") -> Path:
    """Refuse, before any work is done, an output file that could not be written at the end: a path that is
    a folder, below a file, or in a folder where no file can be created. Missing parent folders are fine:
    they are created when the file is written. `flag` names the setting in the error (e.g. '--out'),
    `example` is the file name it suggests inside a folder given by mistake."""
    path = Path(path)
    if str(path).strip() == "" or path.name in ("", ".", ".."):
        raise InputError(f"{flag} needs a file name, got {str(path)!r}")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder: give a file name (e.g. {path / example})")
    if path.exists() and not path.is_file():
        raise InputError(f"{flag} {path} exists and is not a regular file")
    _check_writable_folder(_nearest_existing(path.parent), flag, path)
    return path


def check_output_folder(path: str | Path, flag: str) -> Path:
    """Refuse, before any work is done, an output folder that could not be written: an existing file, a path
    below a file, or a place without write permission. A missing folder is fine (created when needed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder")
    _check_writable_folder(_nearest_existing(path), flag, path)
    return path


def _check_writable_folder(folder: Path, flag: str, target: Path) -> None:
    if not folder.is_dir():
        raise InputError(f"{flag} {target}: {folder} is a file, not a folder")
    try:  # a nameless file, gone when closed: permissions alone miss read-only mounts and /proc
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"{flag} {target}: cannot write in {folder} ({err.strerror or err})") from None


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


WANDB_ID_FILE = "wandb_id.txt"  # in the run folder: the W&B run a resumed run continues


class MetricLogger:
    """Logs dicts of scalars to `metrics.jsonl` (always) and, when asked, TensorBoard / W&B.

    Only rank 0 writes. Keys are namespaced (`train/loss`, `eval/accuracy`). A W&B run is named after the run
    folder and its id is saved there (wandb_id.txt): a resumed run (`fresh` false) continues the same W&B run.
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
            # the run is named after its folder; its id is kept there, so that `--resume` continues the same W&B run
            id_file = Path(out_dir) / WANDB_ID_FILE
            run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() and not fresh else ""
            if not run_id:
                run_id = wandb_module.util.generate_id()
                id_file.write_text(run_id + "\n", encoding="utf-8")
            self._wandb = wandb_module.init(
                project=wandb_project,
                config=config,
                dir=str(out_dir),
                name=Path(out_dir).resolve().name,
                id=run_id,
                resume="allow",
            )

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
