"""Checkpoints people can share: the model card, the exact upload list, pushing, and loading by Hub id.

    coconav push --checkpoint runs/demo/coconut --repo-id USER/NAME [--private] [--with-optimizer] [--dry-run]
    CoconavModel.from_pretrained("USER/NAME")          # also `coconav eval|explore|generate --checkpoint USER/NAME`

A checkpoint folder is already what the Hub holds (safetensors weights, coconav.json, tokenizer files,
NAME.safetensors for the navigator); `save_checkpoint` adds a README.md model card whose front matter
(``library_name: coconav``, base model, data sets, tags, evaluation results as ``model-index``) is built
with huggingface_hub's own ModelCardData / EvalResult. `upload_files` is the exact list `push` uploads:
no optimizer or trainer state unless asked, and never a pickle (.bin, .pt, .pkl ...).

A checkpoint argument that is not an existing local path but looks like ``owner/name`` resolves through
``huggingface_hub.snapshot_download``, which honours the Hub cache (HF_HUB_CACHE / HF_HOME) and offline
mode (HF_HUB_OFFLINE=1 reads the cache only). `resolve_checkpoint` is the one place that does it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from coconav.errors import CheckpointError
from coconav.model.latent_lm import META_FILE, read_metadata

CARD_FILE = "README.md"
PLOT_FILE = "accuracy_vs_forward_passes.png"  # the accuracy-against-compute plot (coconav/eval/plots.py)
TRAINER_FILES = ("trainer_state.safetensors", "trainer_state.json")  # optimizer + RNG (coconav/checkpoint.py)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# what a checkpoint folder holds besides pickles: weights and modules (.safetensors), model, tokenizer and
# coconav metadata (.json), tokenizer vocabularies and chat templates, the card and its figure
UPLOAD_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja", ".md", ".png")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
SCRATCH_MODELS = ("scratch-llama", "scratch-gpt2")
HUB_ALIASES = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
TOKEN_HINT = "log in with `hf auth login` or set HF_TOKEN"


# -- loading by Hub id --------------------------------------------------------------------------------


def looks_like_repo_id(text: str) -> bool:
    """'owner/name' as the Hub spells repo ids (no '..', no '--', not ending in '.git')."""
    text = str(text)
    return bool(REPO_ID.fullmatch(text)) and ".." not in text and "--" not in text and not text.endswith(".git")


def resolve_checkpoint(name: str | Path) -> Path:
    """A local path as is; an 'owner/name' that is no local path: its snapshot folder in the Hub cache
    (downloaded when online and missing; HF_HUB_OFFLINE=1: the cache only). Pickled files are never fetched."""
    path = Path(name)
    if path.exists() or not looks_like_repo_id(str(name)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        HTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{name}: no such local folder, and the Hub repo {name}"
    try:
        folder = snapshot_download(str(name), ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES])
    except GatedRepoError:
        raise CheckpointError(f"{where} is gated: request access on its page, then {TOKEN_HINT}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{where} does not exist or is private ({TOKEN_HINT} if it is yours)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{where} has no 'main' revision") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 reads the cache only" if is_offline_mode() else "the Hub cannot be reached"
        raise CheckpointError(f"{where} is not in the Hub cache ({why}); download it once online") from None
    except HFValidationError as err:
        raise CheckpointError(f"{name}: not a folder nor a valid Hub repo id ({_first_line(err)})") from None
    except (HfHubHTTPError, HTTPError, OSError) as err:
        raise CheckpointError(f"{where} cannot be downloaded ({_first_line(err)})") from None
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise CheckpointError(f"the Hub repo {name} is not a coconav checkpoint: {META_FILE} is missing")
    return folder


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


# -- the model card -----------------------------------------------------------------------------------


def base_model_id(config: dict) -> str | None:
    """The Hub id the checkpoint was fine-tuned from (None: a from-scratch model or a local folder)."""
    name = str((config.get("model") or {}).get("name_or_path") or "")
    name = HUB_ALIASES.get(name.lower(), name)
    if not name or name in SCRATCH_MODELS or Path(name).exists() or not looks_like_repo_id(name):
        return None
    return name


def dataset_ids(config: dict) -> list[str]:
    """Hub data sets named by the data config ('openai/gsm8k:train' -> 'openai/gsm8k'); none for built-in tasks."""
    data = config.get("data") or {}
    found = []
    for key in ("train", "validation", "test"):
        spec = str(data.get(key) or "")
        repo = spec.split(":", 1)[0]
        if ":" in spec and looks_like_repo_id(repo) and not Path(repo).exists() and repo not in found:
            found.append(repo)
    return found


def card_tags(config: dict) -> list[str]:
    tags = ["coconav", "coconut", "latent-reasoning", "continuous-thought", "chain-of-thought"]
    if config.get("navigator") is not None:
        tags += ["navigator", "ppo", "adaptive-computation"]
    if ((config.get("model") or {}).get("lora")) is not None:
        tags += ["lora", "peft"]
    return tags


def eval_results(meta: dict, datasets: list[str]) -> list:
    """The accuracy stored in the checkpoint's metrics (the stage's validation evaluation) as an EvalResult."""
    from huggingface_hub import EvalResult

    metrics = meta.get("metrics") or {}
    if not isinstance(metrics.get("accuracy"), (int, float)):
        return []
    task = (meta.get("config") or {}).get("data", {}).get("task", "arithmetic")
    dataset = datasets[0] if datasets else f"coconav/{task}"
    return [
        EvalResult(
            task_type="text-generation",
            task_name="Question answering with continuous thoughts",
            dataset_type=dataset,
            dataset_name=dataset if datasets else f"coconav built-in task: {task}",
            dataset_split="validation",
            metric_type="accuracy",
            metric_name="accuracy (validation)",
            metric_value=round(float(metrics["accuracy"]), 4),
        )
    ]


def model_card(meta: dict, repo_id: str | None = None, plot: str | None = None):
    """The README.md of a checkpoint (huggingface_hub.ModelCard): Hub metadata from `meta` (its coconav.json),
    how to load it, its evaluation and training config; `plot` is a figure file next to the card."""
    from huggingface_hub import ModelCard, ModelCardData

    config = meta.get("config") or {}
    name = repo_id or "USER/NAME"  # `push` renders the card again with the repo id
    title = (
        repo_id.split("/")[-1]
        if repo_id
        else "coconav-"
        + (
            "navigator"
            if config.get("navigator") is not None
            else (config.get("curriculum") or {}).get("mode", "coconut")
        )
    )
    datasets = dataset_ids(config)
    data = ModelCardData(
        library_name="coconav",
        base_model=base_model_id(config),
        datasets=datasets or None,
        tags=card_tags(config),
        pipeline_tag="text-generation",
        model_name=title,
        eval_results=eval_results(meta, datasets) or None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_card_body(meta, name, title, plot)}")


def _card_body(meta: dict, name: str, title: str, plot: str | None) -> str:
    config = meta.get("config") or {}
    state, metrics = meta.get("train_state") or {}, meta.get("metrics") or {}
    navigator = config.get("navigator") is not None
    mode = (config.get("curriculum") or {}).get("mode", "coconut")
    what = (
        "a COCONUT latent LM with a PPO-trained navigator that decides how many continuous thoughts to take, "
        "steers them and can fuse K trajectories into one answer"
        if navigator
        else f"a latent LM trained with coconav's curriculum (mode `{mode}`, stage {state.get('stage', 0)})"
    )
    intro = (
        f"A coconav checkpoint: {what}. It reasons in continuous thoughts (COCONUT, Hao et al. 2024, "
        "arXiv:2412.06769): the last hidden state is fed back as the next input embedding instead of "
        "writing a chain of thought in words."
    )
    placeholder = ["(USER/NAME: the Hub repo it is pushed to; `coconav push` fills it in.)", ""]
    lines = [
        f"# {title}",
        "",
        intro,
        "",
        "## How to use",
        "",
        *(placeholder if name == "USER/NAME" else []),
        "```python",
        "from coconav import CoconavModel",
        "",
        f'model = CoconavModel.from_pretrained("{name}")',
        'model.generate("3 + 4 * 2 ?")',
    ]
    if navigator:
        lines.append('model.generate(["3 + 4 ?"], num_trajectories=5, fusion="majority")')
    lines += [
        "```",
        "",
        "or from the command line:",
        "",
        "```bash",
        "pip install coconav",
        f"coconav eval --checkpoint {name} --data test",
        f'coconav generate --checkpoint {name} "3 + 4 * 2 ?"',
        "```",
        "",
    ]
    if isinstance(metrics.get("accuracy"), (int, float)):
        thoughts, passes = metrics.get("mean_thoughts", float("nan")), metrics.get("mean_forward_passes", float("nan"))
        lines += [
            "## Evaluation",
            "",
            "| split | accuracy | mean thoughts | mean forward passes |",
            "| --- | --- | --- | --- |",
            f"| validation | {metrics['accuracy']:.3f} | {thoughts:.2f} | {passes:.1f} |",
            "",
        ]
    if plot:
        lines += ["## Accuracy against compute", "", f"![accuracy against forward passes]({plot})", ""]
    steps = state.get("global_step", 0)
    done = f"Stage {state.get('stage', 0)}, {steps} optimizer step{'' if steps == 1 else 's'}."
    lines += [
        "## Training",
        "",
        f"{done} The resolved run config (`coconav train --config config.yaml`):",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: Path, meta: dict, run_dir: Path | None = None) -> Path:
    """Write README.md (and copy the run folder's accuracy-against-compute plot, if there is one) into
    `folder`, the temporary folder of a checkpoint being saved (made atomic by its rename)."""
    plot = None
    if run_dir is not None and (Path(run_dir) / PLOT_FILE).is_file():
        shutil.copyfile(Path(run_dir) / PLOT_FILE, folder / PLOT_FILE)
        plot = PLOT_FILE
    path = folder / CARD_FILE
    path.write_text(str(model_card(meta, plot=plot)), encoding="utf-8")
    return path


# -- pushing ------------------------------------------------------------------------------------------


def upload_files(folder: str | Path, with_optimizer: bool = False) -> list[str]:
    """The exact files (relative to `folder`, sorted) that `push` uploads: weights and modules (safetensors),
    coconav.json, model and tokenizer files, the model card (README.md, always: `push` renders it) and its
    figure; the trainer state (optimizer, RNG) only `with_optimizer`. A pickle anywhere in the folder is
    refused (CheckpointError)."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise CheckpointError(f"{folder} is not a coconav checkpoint: {META_FILE} is missing")
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise CheckpointError(
            f"{folder} holds pickled files ({', '.join(pickles[:3])}): coconav uploads "
            "safetensors only; remove them or re-save the checkpoint"
        )
    chosen = [f for f in files if f.endswith(UPLOAD_SUFFIXES) and (with_optimizer or f not in TRAINER_FILES)]
    if with_optimizer and not all(f in files for f in TRAINER_FILES):
        raise CheckpointError(f"--with-optimizer: {folder} has no trainer state ({', '.join(TRAINER_FILES)})")
    return sorted(set(chosen) | {CARD_FILE})  # the card always: push renders it for the repo id


def portability_warnings(folder: str | Path) -> list[str]:
    """What would keep others from loading the pushed checkpoint: a LoRA adapter over a local base folder."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        return []
    base = str(json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or "")
    if looks_like_repo_id(base) and not Path(base).exists():
        return []
    return [
        (
            f"the LoRA adapters' base model {base!r} is a local folder: others can load this checkpoint only "
            "with a copy of it (train over a Hub id to share it)"
        )
    ]


def push(
    folder: str | Path, repo_id: str, private: bool = False, with_optimizer: bool = False, token: str | None = None
) -> str:
    """Upload `upload_files(folder)` to the Hub model repo `repo_id` (created if missing) in one commit. The
    card is rendered again from coconav.json with `repo_id` in its loading example (a checkpoint saved
    before cards existed gets one too). Returns the repo URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    folder = Path(folder)
    if not looks_like_repo_id(repo_id):
        raise CheckpointError(f"--repo-id must be 'owner/name' (letters, digits, '.', '_', '-'), got {repo_id!r}")
    files = upload_files(folder, with_optimizer)
    if is_offline_mode():
        raise CheckpointError("pushing needs the network, but HF_HUB_OFFLINE is set")
    token = token or get_token()
    if token is None:
        raise CheckpointError(f"pushing{' a private repo' if private else ''} to the Hub needs a token: {TOKEN_HINT}")
    card = model_card(read_metadata(folder), repo_id=repo_id, plot=PLOT_FILE if PLOT_FILE in files else None)
    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files if f != CARD_FILE]
    ops.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=str(card).encode("utf-8")))
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id, ops, commit_message=f"coconav checkpoint {folder.name}")
    except (HfHubHTTPError, HTTPError, OSError) as err:  # refused by the Hub, or no connection
        raise CheckpointError(f"cannot push to {repo_id}: {_first_line(err)}") from None
    return str(url)
