"""Training checkpoints: the latent LM (Hugging Face folder, safetensors) plus resumable state.

A checkpoint folder ``RUN/checkpoints/NAME`` holds
- the backbone and tokenizer as ``save_pretrained`` writes them (loadable by transformers alone),
- ``coconav.json``: special token ids, the resolved run config, stage, step, metrics,
- ``trainer_state.safetensors`` + ``trainer_state.json``: optimizer tensors and their structure
  and the torch RNG state; extra modules (the navigator) as ``NAME.safetensors`` — never a pickle,
- ``README.md``: a Hub model card (coconav/io/hub.py), so the folder can be pushed as it is, and
  ``coconav_pipeline.py``, named in config.json, which makes ``transformers.pipeline`` refuse the folder.

A checkpoint argument may also be a Hub id ``owner/name`` (resolved through the Hub cache, see
``coconav.io.hub.resolve_checkpoint``).

Every folder is written under a temporary name and renamed into place when complete, so an
interrupted run never leaves a half-written checkpoint that could be loaded. Resuming happens
only when asked (``coconav train --resume RUN``) and continues at the stored stage and step.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from coconav.common import replace_dir_atomic
from coconav.errors import CheckpointError
from coconav.io.hub import current_versions, resolve_checkpoint, write_model_card, write_pipeline_guard
from coconav.model.latent_lm import META_FILE, LatentLM, read_metadata

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"


@dataclass
class TrainState:
    """Where a run stands: the stage, optimizer steps done in it, and steps done overall."""

    stage: int = 0
    step: int = 0
    global_step: int = 0
    stage_done: bool = False


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into safetensors-able tensors and JSON structure."""
    tensors: dict[str, torch.Tensor] = {}
    structure: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, slots in state["state"].items():
        entry = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                name = f"optimizer.{pid}.{key}"
                tensors[name] = value.detach().contiguous().cpu()
                entry[key] = {"tensor": name}
            else:
                entry[key] = {"value": value}
        structure["state"][str(pid)] = entry
    return tensors, structure


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    state = {}
    for pid, entry in structure["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entry.items()}
    return {"state": state, "param_groups": structure["param_groups"]}


def save_checkpoint(
    directory: str | Path,
    lm: LatentLM,
    train_state: TrainState,
    config: dict,
    optimizer: torch.optim.Optimizer | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write a complete checkpoint atomically (temporary folder, then rename), with its model card."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    extra = {
        "config": config,
        "train_state": train_state.__dict__,
        "metrics": metrics or {},
        "versions": current_versions(),  # the model card's versions block
    }
    lm.save_pretrained(tmp, extra_metadata=extra)
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    structure: dict[str, Any] = {"optimizer": None, "modules": []}
    if optimizer is not None:
        opt_tensors, structure["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
    for name, module in (modules or {}).items():  # e.g. the navigator: NAME.safetensors, read by load_module
        structure["modules"].append(name)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors")
        )
    save_file(tensors, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(structure), encoding="utf-8")
    run_dir = directory.parent.parent if directory.parent.name == "checkpoints" else None  # RUN/checkpoints/NAME
    write_pipeline_guard(tmp)  # transformers.pipeline() refuses the folder with a message (coconav/io/hub.py)
    write_model_card(tmp, read_metadata(tmp), run_dir)
    replace_dir_atomic(tmp, directory)
    return directory


def _read_trainer_files(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainer state's tensors (safetensors) and their JSON structure; a CheckpointError if either is bad."""
    try:
        tensors = load_file(str(directory / STATE_TENSORS))
        structure = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    except (SafetensorError, ValueError, RecursionError, OSError) as err:  # ValueError: bad JSON, an integer too long
        raise CheckpointError(f"{directory}: trainer state missing or corrupt ({type(err).__name__})") from None
    return tensors, structure


def load_trainer_state(
    directory: str | Path,
    optimizer: torch.optim.Optimizer | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
    restore_rng: bool = True,
) -> TrainState:
    """Restore optimizer, extra modules and RNG from a checkpoint; returns its TrainState."""
    directory = Path(directory)
    meta = read_metadata(directory)
    tensors, structure = _read_trainer_files(directory)
    if optimizer is not None and structure.get("optimizer") is not None:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, structure["optimizer"]))
    for name, module in (modules or {}).items():
        load_module(directory, name, module)
    if restore_rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return TrainState(**meta.get("train_state", {}))


def load_module(directory: str | Path, name: str, module: torch.nn.Module) -> torch.nn.Module:
    """Load NAME.safetensors of a checkpoint into `module` (strict: every tensor must match, except that
    tensors named by the module's OPTIONAL_KEYS prefixes may be missing: an older checkpoint saved before
    they existed keeps their initialisation, e.g. the navigator's zero-initialised multi-trajectory parts)."""
    path = Path(directory) / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory}: {path.name} is missing")
    optional = tuple(getattr(module, "OPTIONAL_KEYS", ()))
    try:
        state = load_file(str(path))
        result = module.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(optional)]
        if missing or result.unexpected_keys:
            what = (
                (f"missing {', '.join(missing[:3])}" if missing else "")
                + ("; " if missing and result.unexpected_keys else "")
                + (f"unexpected {', '.join(result.unexpected_keys[:3])}" if result.unexpected_keys else "")
            )
            raise RuntimeError(f"the tensors do not match the module: {what}")
    except (SafetensorError, OSError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot load ({first[:200]})") from None
    return module


def checkpoint_meta(directory: str | Path) -> dict:
    """The coconav.json metadata of a checkpoint (config, train_state, metrics)."""
    return read_metadata(Path(directory))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first by global step (temporary folders ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith(".") or not (path / META_FILE).is_file():
            continue
        try:
            state = read_metadata(path).get("train_state", {})
        except CheckpointError:
            continue
        found.append((state.get("global_step", 0), state.get("stage_done", False), path))
    return [p for _, _, p in sorted(found, key=lambda x: (x[0], x[1]))]


def latest_checkpoint(
    run_dir: str | Path,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """The most advanced complete checkpoint of a run folder (or a checkpoint folder itself, or a Hub id
    'owner/name' that is no local path: its snapshot in the Hub cache, downloaded if missing and online, at
    `revision` with `token` into `cache_dir`; see coconav.io.hub.resolve_checkpoint)."""
    run_dir = resolve_checkpoint(run_dir, revision=revision, token=token, cache_dir=cache_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {run_dir}")
    if (run_dir / META_FILE).is_file():
        return run_dir
    found = list_checkpoints(run_dir)
    if not found:
        if not (run_dir / "checkpoints").is_dir() and not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir} is not a coconav checkpoint: {META_FILE} is missing")
        raise CheckpointError(f"no complete checkpoint under {run_dir / 'checkpoints'}")
    return found[-1]


def read_optimizer_state(directory: str | Path) -> dict | None:
    """The optimizer state_dict a checkpoint holds (None when it holds none), without an optimizer
    to load it into: a sharded run (coconav/distributed.py) loads its slice of it."""
    directory = Path(directory)
    tensors, structure = _read_trainer_files(directory)
    if structure.get("optimizer") is None:
        return None
    return _unflatten_optimizer(tensors, structure["optimizer"])
