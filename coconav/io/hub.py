"""Checkpoints people can share: the model card, the exact upload list, pushing, and loading by Hub id.

    coconav push --checkpoint runs/demo/coconut --repo-id USER/NAME [--private] [--with-optimizer] [--dry-run]
    CoconavModel.from_pretrained("USER/NAME", revision="v1")   # also `coconav eval|generate --checkpoint USER/NAME`
    CoconavModel.from_pretrained("runs/demo/coconut").push_to_hub("USER/NAME")

A checkpoint folder is already what the Hub holds (safetensors weights, coconav.json, tokenizer files,
NAME.safetensors for the navigator); `save_checkpoint` adds a README.md model card written from what the
checkpoint is (its method and settings, evaluations, versions, citation, licence), whose front matter
(``library_name: coconav``, ``license: mit``, ``inference: false``, base model, data sets, tags, evaluation results
as ``model-index``) is built with huggingface_hub's own ModelCardData / EvalResult; `record_evaluation` adds test
numbers and a figure later. config.json names a custom pipeline (`write_pipeline_guard`), so that
``transformers.pipeline`` refuses the folder instead of writing answers without thoughts. `upload_files` is the
exact list `push` uploads: no optimizer or trainer state unless asked, and never a pickle (.bin, .pt, .pkl ...).

A checkpoint argument that is not an existing local path but looks like ``owner/name`` resolves through
``huggingface_hub.snapshot_download``, which honours the Hub cache (HF_HUB_CACHE / HF_HOME, or `cache_dir`), offline
mode (HF_HUB_OFFLINE=1 reads the cache only), a `revision` and a `token`. `resolve_checkpoint` is the one place that
does it; `hub_source` names a snapshot folder by its repo id and commit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from coconav.errors import CheckpointError
from coconav.model.latent_lm import META_FILE, read_metadata

CARD_FILE = "README.md"
PLOT_FILE = "accuracy_vs_forward_passes.png"  # the accuracy-against-compute plot (coconav/eval/plots.py)
TRAINER_FILES = ("trainer_state.safetensors", "trainer_state.json")  # optimizer + RNG (coconav/io/checkpoint.py)
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


def resolve_checkpoint(
    name: str | Path, revision: str | None = None, token: str | bool | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local path as is; an 'owner/name' that is no local path: its snapshot folder in the Hub cache
    (downloaded when online and missing; HF_HUB_OFFLINE=1: the cache only). Pickled files are never fetched.
    `revision`: a branch, tag or commit of the repo (default main); `token`: for a private or gated repo
    (default: the logged-in token); `cache_dir`: the Hub cache to use (default HF_HUB_CACHE)."""
    path = Path(name)
    if path.exists() or not looks_like_repo_id(str(name)):
        if revision is not None:
            raise CheckpointError(f"--revision {revision}: {name} is a local folder, not a Hub repo id")
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
        folder = snapshot_download(
            str(name),
            revision=revision,
            token=token,
            cache_dir=None if cache_dir is None else str(cache_dir),
            ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES],
        )
    except GatedRepoError:
        raise CheckpointError(f"{where} is gated: request access on its page, then {TOKEN_HINT}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{where} does not exist or is private ({TOKEN_HINT} if it is yours)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{where} has no revision {revision or 'main'!r}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 reads the cache only" if is_offline_mode() else "the Hub cannot be reached"
        at = "" if revision is None else f" at revision {revision!r}"
        raise CheckpointError(f"{where}{at} is not in the Hub cache ({why}); download it once online") from None
    except HFValidationError as err:
        raise CheckpointError(f"{name}: not a folder nor a valid Hub repo id ({_first_line(err)})") from None
    except (HfHubHTTPError, HTTPError, OSError) as err:
        raise CheckpointError(f"{where} cannot be downloaded ({_first_line(err)})") from None
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise CheckpointError(f"the Hub repo {name} is not a coconav checkpoint: {META_FILE} is missing")
    return folder


@dataclass(frozen=True)
class HubSource:
    """Where a checkpoint folder in the Hub cache came from: the repo and the commit of its snapshot."""

    repo_id: str
    commit: str


def hub_source(folder: str | Path) -> HubSource | None:
    """The repo id and commit of a snapshot folder of the Hub cache (.../models--OWNER--NAME/snapshots/SHA, or a
    folder inside one); None for any other folder. Reports name these instead of the snapshot path."""
    parts = Path(os.path.abspath(folder)).parts
    for i in range(len(parts) - 2, 0, -1):
        if (
            parts[i] == "snapshots"
            and parts[i - 1].startswith("models--")
            and re.fullmatch(r"[0-9a-f]{40}", parts[i + 1])
        ):
            repo_id = parts[i - 1].removeprefix("models--").replace("--", "/", 1)
            return HubSource(repo_id, parts[i + 1]) if looks_like_repo_id(repo_id) else None
    return None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


# -- the model card -----------------------------------------------------------------------------------

LICENSE = "mit"  # coconav's licence (pyproject.toml); a fine-tuned checkpoint may also be bound by its base model's
GUARD_FILE = "coconav_pipeline.py"  # what transformers' pipeline() loads instead of answering (write_pipeline_guard)
CITATION = """@article{hao2024coconut,
  title   = {Training Large Language Models to Reason in a Continuous Latent Space},
  author  = {Hao, Shibo and Sukhbaatar, Sainbayar and Su, DiJia and Li, Xian and Hu, Zhiting and Weston, Jason and Tian, Yuandong},
  journal = {arXiv preprint arXiv:2412.06769},
  year    = {2024}
}
@software{coconav,
  title   = {coconav: COCONUT continuous-thought reasoning for Hugging Face causal LMs, with a PPO-trained navigator},
  version = {VERSION}
}"""


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


def _section(config: dict, name: str) -> dict:
    """A config section with the defaults of its dataclass filled in (a checkpoint's config may predate a field)."""
    from coconav.config import CurriculumConfig, NavigatorConfig, PPOConfig

    defaults = {"curriculum": CurriculumConfig, "navigator": NavigatorConfig, "ppo": PPOConfig}[name]()
    return {**asdict(defaults), **(config.get(name) or {})}


def card_tags(meta: dict) -> list[str]:
    """Hub tags: what the checkpoint does (continuous thoughts only where it thinks in them)."""
    config = meta.get("config") or {}
    mode = _section(config, "curriculum")["mode"]
    tags = ["coconav"]
    if config.get("navigator") is not None or mode == "coconut":
        tags.append("coconut")
    if thinks_in_thoughts(meta):
        tags += ["latent-reasoning", "continuous-thought"]
    if mode == "cot" or (mode == "coconut" and config.get("navigator") is None):
        tags.append("chain-of-thought")  # a COCONUT run writes the steps it has not yet replaced in language
    if config.get("navigator") is not None:
        tags += ["navigator", "ppo", "adaptive-computation"]
    if ((config.get("model") or {}).get("lora")) is not None:
        tags += ["lora", "peft"]
    return tags


def describe(meta: dict) -> str:
    """What the checkpoint is, in one or two sentences, from its config and stage (the card's first paragraph)."""
    config = meta.get("config") or {}
    state = meta.get("train_state") or {}
    cur = _section(config, "curriculum")
    if config.get("navigator") is not None:
        nav = _section(config, "navigator")
        halting = (
            f"decides after each continuous thought whether to think on (at most {nav['max_thoughts']} thoughts)"
            if nav["halting"]
            else f"always takes {nav['max_thoughts']} continuous thoughts (navigator.halting is false)"
        )
        steering = (
            "steers each thought by adding a learned offset to it"
            if nav["steering"]
            else "does not steer: the thoughts are the COCONUT model's own (navigator.steering is false)"
        )
        memory = [
            name
            for name, key in (
                ("its own earlier thoughts", "episodic_memory"),
                ("a bank of past trajectories", "persistent_memory"),
                ("the other trajectories of the question", "group_memory"),
            )
            if nav[key]
        ]
        reads = f"; it reads {' and '.join([', '.join(memory[:-1]), memory[-1]] if len(memory) > 1 else memory)}"
        reads = reads if memory else ""
        return (
            f"A COCONUT latent LM with a navigator trained by PPO on top of it. The navigator {halting}, and "
            f"{steering}{reads}. Several trajectories per question (up to {nav['max_trajectories']}) can be fused "
            "into one answer."
        )
    mode, stage = cur["mode"], int(state.get("stage", 0))
    per, top = cur["thoughts_per_step"], cur["max_stage"]
    thoughts = min(stage, top) * per if mode in ("coconut", "pause") else 0
    if mode == "no_cot":
        return "A no-CoT baseline: trained to write the answer directly, with no reasoning steps and no thoughts."
    if mode == "cot":
        return "A chain-of-thought baseline: it writes every reasoning step in language, then the answer."
    if mode == "pause":
        return (
            f"A pause-token baseline: the question is followed by {thoughts} <pause> tokens (the paper's "
            "'pause as thought'), then the remaining steps in language and the answer; no continuous thoughts."
        )
    if thoughts == 0:
        return (
            "Stage 0 of the COCONUT curriculum: trained on chain of thought, it writes every reasoning step "
            "in language; it takes no continuous thoughts yet."
        )
    rest = "" if stage > top else ", then writes the reasoning steps not yet replaced in language"
    return f"A COCONUT model at stage {stage} of the curriculum: it answers after {thoughts} continuous thoughts{rest}."


def thinks_in_thoughts(meta: dict) -> bool:
    """Whether the checkpoint reasons in continuous thoughts (a navigator, or COCONUT past stage 0)."""
    config = meta.get("config") or {}
    cur = _section(config, "curriculum")
    stage = int((meta.get("train_state") or {}).get("stage", 0))
    return config.get("navigator") is not None or (cur["mode"] == "coconut" and min(stage, cur["max_stage"]) > 0)


def card_settings(meta: dict) -> list[tuple[str, str]]:
    """The settings that make the checkpoint what it is, as (config key, value) rows; the full config follows."""
    config = meta.get("config") or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    cur = _section(config, "curriculum")
    rows = [("model.name_or_path", model.get("name_or_path")), ("data.task", data.get("task"))]
    if data.get("task") == "files":
        rows += [(f"data.{k}", data.get(k)) for k in ("train", "validation", "test") if data.get(k)]
    if model.get("lora") is not None:
        rows.append(("model.lora.r", (model.get("lora") or {}).get("r")))
    if config.get("navigator") is not None:
        nav, ppo = _section(config, "navigator"), _section(config, "ppo")
        rows.append(("init_from", config.get("init_from")))
        keys = ("max_thoughts", "halting", "steering", "halt_threshold", "multi_halt_threshold", "pass_budget")
        rows += [(f"navigator.{k}", nav[k]) for k in keys]
        rows += [(f"navigator.{k}", nav[k]) for k in ("episodic_memory", "persistent_memory", "group_memory")]
        rows += [
            (f"ppo.{k}", ppo[k]) for k in ("updates", "rollout_batch", "num_trajectories", "fusion", "thought_cost")
        ]
    else:
        rows += [("curriculum.mode", cur["mode"]), ("stage", (meta.get("train_state") or {}).get("stage", 0))]
        if cur["mode"] in ("coconut", "pause"):
            rows += [
                ("curriculum.thoughts_per_step", cur["thoughts_per_step"]),
                ("curriculum.max_stage", cur["max_stage"]),
            ]
    return [
        (key, "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
        for key, value in rows
    ]


def evaluation_rows(meta: dict) -> list[dict]:
    """The checkpoint's evaluations, validation first: `evaluation` in coconav.json (label -> split, accuracy,
    mean_thoughts, mean_forward_passes; written by `record_evaluation`), and the stage's validation numbers kept in
    its metrics by `coconav train`."""
    rows = [{"label": label, **record} for label, record in (meta.get("evaluation") or {}).items()]
    metrics = meta.get("metrics") or {}
    if isinstance(metrics.get("accuracy"), (int, float)) and not any(r.get("split") == "validation" for r in rows):
        rows.append({"label": "validation", "split": "validation", **metrics})
    rows = [r for r in rows if isinstance(r.get("accuracy"), (int, float))]
    return sorted(rows, key=lambda r: r.get("split") != "validation")


def eval_results(meta: dict, datasets: list[str]) -> list:
    """The checkpoint's evaluations (`evaluation_rows`) as huggingface_hub EvalResults (the card's model-index)."""
    from huggingface_hub import EvalResult

    task = (meta.get("config") or {}).get("data", {}).get("task", "arithmetic")
    dataset = datasets[0] if datasets else f"coconav/{task}"
    name = "Question answering with continuous thoughts" if thinks_in_thoughts(meta) else "Question answering"
    return [
        EvalResult(
            task_type="text-generation",
            task_name=name,
            dataset_type=dataset,
            dataset_name=dataset if datasets else f"coconav built-in task: {task}",
            dataset_split=row["split"],
            metric_type="accuracy",
            metric_name=f"accuracy ({row['label']})",
            metric_value=round(float(row["accuracy"]), 4),
        )
        for row in evaluation_rows(meta)
    ]


def versions(meta: dict) -> dict[str, str]:
    """The coconav, torch and transformers versions the checkpoint was saved with (coconav.json), else these."""
    saved = meta.get("versions") or {}
    return {name: str(saved.get(name) or version) for name, version in current_versions().items()}


def current_versions() -> dict[str, str]:
    """The versions installed here, as `save_checkpoint` records them."""
    import torch
    import transformers

    coconav = sys.modules["coconav"]  # the package itself, imported with any of its modules (above this floor)
    return {"coconav": coconav.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def source_url() -> str | None:
    """Where coconav's source lives, when the installed package says so (pyproject's [project.urls])."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("coconav").get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    found = dict(u.split(", ", 1) for u in urls if ", " in u)
    return next((found[k] for k in ("Source", "Repository", "Homepage") if k in found), None)


def model_card(meta: dict, repo_id: str | None = None, plot: str | None = None):
    """The README.md of a checkpoint (huggingface_hub.ModelCard): Hub metadata from `meta` (its coconav.json),
    what it is, how to load it, its evaluations, training config, versions and citation; `plot` is a figure file
    next to the card. `inference: false` and no pipeline_tag: the Hub offers no widget, since a plain
    transformers pipeline cannot take the thoughts (write_pipeline_guard makes it refuse)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = meta.get("config") or {}
    name = repo_id or "USER/NAME"  # `push` renders the card again with the repo id
    kind = "navigator" if config.get("navigator") is not None else _section(config, "curriculum")["mode"]
    title = repo_id.split("/")[-1] if repo_id else f"coconav-{kind}"
    datasets = dataset_ids(config)
    data = ModelCardData(
        library_name="coconav",
        license=LICENSE,
        base_model=base_model_id(config),
        datasets=datasets or None,
        tags=card_tags(meta),
        model_name=title,
        eval_results=eval_results(meta, datasets) or None,
        inference=False,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_card_body(meta, name, title, plot)}")


def _card_body(meta: dict, name: str, title: str, plot: str | None) -> str:
    config = meta.get("config") or {}
    state = meta.get("train_state") or {}
    intro = describe(meta)
    if thinks_in_thoughts(meta):
        intro += (
            " A continuous thought (COCONUT, Hao et al. 2024, arXiv:2412.06769) is the last hidden state fed back "
            "as the next input embedding instead of a word."
        )
    placeholder = ["(USER/NAME: the Hub repo it is pushed to; `coconav push` fills it in.)", ""]
    url = source_url()
    install = (
        [f'pip install "git+{url}"        # or: git clone {url} && pip install -e <the clone>']
        if url
        else ["git clone <the coconav repository> coconav && pip install -e ./coconav"]
    )
    lines = [
        f"# {title}",
        "",
        intro,
        "",
        "## How to use",
        "",
        "coconav is installed from its source (no package index serves it):",
        "",
        "```bash",
        *install,
        "```",
        "",
        *(placeholder if name == "USER/NAME" else []),
        "```python",
        "from coconav import CoconavModel",
        "",
        f'model = CoconavModel.from_pretrained("{name}")',
        'model.generate("3 + 4 * 2 ?")',
    ]
    if config.get("navigator") is not None:
        lines.append('model.generate(["3 + 4 ?"], num_trajectories=5, fusion="majority")')
    lines += [
        "```",
        "",
        "or from the command line:",
        "",
        "```bash",
        f"coconav eval --checkpoint {name} --data test",
        f'coconav generate --checkpoint {name} "3 + 4 * 2 ?"',
        "```",
        "",
        f"transformers alone loads the weights (a plain causal LM) but cannot answer with them: the answer needs "
        f"coconav's prompt markers{' and continuous thoughts' if thinks_in_thoughts(meta) else ''}. "
        "`transformers.pipeline` refuses this repo for that reason (its config.json names a custom pipeline, "
        f"{GUARD_FILE}, that explains it).",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| `{key}` | {value} |" for key, value in card_settings(meta)),
        "",
    ]
    rows = evaluation_rows(meta)
    if rows:
        lines += [
            "## Evaluation",
            "",
            "| evaluation | split | accuracy | mean thoughts | mean forward passes |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            thoughts = row.get("mean_thoughts", float("nan"))
            passes = row.get("mean_forward_passes", float("nan"))
            lines.append(f"| {row['label']} | {row['split']} | {row['accuracy']:.3f} | {thoughts:.2f} | {passes:.1f} |")
        lines.append("")
    if plot:
        lines += ["## Accuracy against compute", "", f"![accuracy against forward passes]({plot})", ""]
    steps = state.get("global_step", 0)
    done = f"Stage {state.get('stage', 0)}, {steps} optimizer step{'' if steps == 1 else 's'}."
    if config.get("navigator") is not None:
        done = f"{steps} PPO update{'' if steps == 1 else 's'}."
    lines += [
        "## Training",
        "",
        f"{done} The resolved run config (`coconav train --config config.yaml`):",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
        "## Versions",
        "",
        "Saved with:",
        "",
        "```text",
        *(f"{package}=={version}" for package, version in versions(meta).items()),
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION.replace("VERSION", versions(meta)["coconav"]),
        "```",
        "",
        "## Licence",
        "",
        "MIT, as coconav; a fine-tuned checkpoint is also bound by its base model's licence.",
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


def record_evaluation(folder: str | Path, evaluation: dict[str, dict], plot: str | Path | None = None) -> Path:
    """Add evaluations to a saved checkpoint and write its card again: `evaluation` maps a label ('test',
    'test, K = 5') to a summary with its `split` and accuracy, mean_thoughts, mean_forward_passes (kept in
    coconav.json's `evaluation`, so that `push` renders them too); `plot`, a figure to copy in beside the card.
    Each file is replaced atomically. Returns the card's path."""
    from coconav.common import write_json_atomic

    folder = Path(folder)
    meta = read_metadata(folder)
    keep = ("split", "accuracy", "mean_thoughts", "mean_forward_passes", "num_questions", "num_trajectories", "fusion")
    for label, record in evaluation.items():
        if record.get("split") not in ("test", "validation"):
            raise CheckpointError(
                f"evaluation {label!r}: split must be 'test' or 'validation', got {record.get('split')!r}"
            )
        meta.setdefault("evaluation", {})[label] = {k: record[k] for k in keep if k in record}
    write_json_atomic(folder / META_FILE, meta)
    if plot is not None and Path(plot).is_file():
        tmp = folder / f".{PLOT_FILE}.tmp"
        shutil.copyfile(plot, tmp)
        os.replace(tmp, folder / PLOT_FILE)
    card = model_card(meta, plot=PLOT_FILE if (folder / PLOT_FILE).is_file() else None)
    tmp = folder / f".{CARD_FILE}.tmp"
    tmp.write_text(str(card), encoding="utf-8")
    os.replace(tmp, folder / CARD_FILE)
    return folder / CARD_FILE


# -- the guard against a plain transformers pipeline --------------------------------------------------

GUARD_MESSAGE = (
    "this is a coconav checkpoint: its answers need coconav's prompt markers and, for COCONUT and navigator "
    "checkpoints, continuous thoughts (hidden states fed back as inputs, arXiv:2412.06769), which the "
    "transformers text-generation pipeline does not produce; load it with coconav instead: "
    "`from coconav import CoconavModel; CoconavModel.from_pretrained(PATH_OR_REPO_ID).generate(question)` "
    "(coconav is installed from its source)"
)
GUARD_SOURCE = f'''"""A coconav checkpoint, not a transformers pipeline.

transformers.pipeline() reads `custom_pipelines` in config.json and loads this file (with trust_remote_code=True;
without it, it refuses). It raises at once: the weights are a plain causal LM, but answering with them needs
coconav (https://arxiv.org/abs/2412.06769, COCONUT's continuous thoughts).
"""

raise RuntimeError({GUARD_MESSAGE!r})
'''
PIPELINE_TASKS = ("text-generation",)  # the task a causal LM's config offers a pipeline for


def guarded_config(config: dict) -> dict:
    """A transformers config.json dict with `custom_pipelines` naming GUARD_FILE: transformers.pipeline() on the
    folder (or Hub repo) then refuses to load it without trust_remote_code, and with it raises GUARD_MESSAGE.
    AutoModelForCausalLM.from_pretrained ignores the key, so coconav (and anyone reusing the weights) loads as
    before."""
    impl = f"{GUARD_FILE.removesuffix('.py')}.CoconavCheckpoint"
    pipelines = {
        task: {"impl": impl, "pt": ["AutoModelForCausalLM"], "tf": [], "type": "text"} for task in PIPELINE_TASKS
    }
    return {**config, "custom_pipelines": pipelines}


def write_pipeline_guard(folder: str | Path) -> None:
    """Write GUARD_FILE into a checkpoint folder and name it in its config.json (see guarded_config). A LoRA
    checkpoint (adapter files, no config.json) is left as it is: transformers builds its pipeline from the
    base model's config."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps(guarded_config(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (Path(folder) / GUARD_FILE).write_text(GUARD_SOURCE, encoding="utf-8")


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
    guard = {GUARD_FILE} if "config.json" in files else set()  # push writes it (and config.json's custom_pipelines)
    return sorted(set(chosen) | {CARD_FILE} | guard)  # the card always: push renders it for the repo id


def portability_warnings(folder: str | Path) -> list[str]:
    """What would keep others from loading the pushed checkpoint: a LoRA adapter over a local base folder."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        return []
    try:
        adapter = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # bad JSON or UTF-8, nested too deeply, an integer too long
        raise CheckpointError(f"{config}: not valid JSON") from None
    if not isinstance(adapter, dict):
        raise CheckpointError(f"{config}: expected a JSON object, got {type(adapter).__name__}")
    base = str(adapter.get("base_model_name_or_path") or "")
    if looks_like_repo_id(base) and not Path(base).exists():
        return []
    return [
        (
            f"the LoRA adapters' base model {base!r} is a local folder: others can load this checkpoint only "
            "with a copy of it (train over a Hub id to share it)"
        )
    ]


def push(
    folder: str | Path,
    repo_id: str,
    private: bool | None = None,
    with_optimizer: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload `upload_files(folder)` to the Hub model repo `repo_id` (created if missing) in one commit. The
    card is rendered again from coconav.json with `repo_id` in its loading example, and config.json carries the
    pipeline guard (a checkpoint saved before cards or the guard existed gets both). `private`: create the repo
    private (None: the Hub's default, public); `revision`: the branch to commit to (created from main if
    missing; default main); `commit_message`: default 'coconav checkpoint NAME'. Returns the repo URL."""
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
    written = {CARD_FILE: str(card), GUARD_FILE: GUARD_SOURCE}
    if "config.json" in files:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        written["config.json"] = json.dumps(guarded_config(config), indent=2, sort_keys=True) + "\n"
    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files if f not in written]
    ops += [
        CommitOperationAdd(path_in_repo=f, path_or_fileobj=text.encode("utf-8"))
        for f, text in written.items()
        if f in files
    ]
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.create_commit(
            repo_id, ops, commit_message=commit_message or f"coconav checkpoint {folder.name}", revision=revision
        )
    except (HfHubHTTPError, HTTPError, OSError) as err:  # refused by the Hub, or no connection
        raise CheckpointError(f"cannot push to {repo_id}: {_first_line(err)}") from None
    return str(url)


def check_push(repo_id: str | None, setting: str = "train.hub_model_id") -> None:
    """Refuse, before a run starts, a push that could not happen at its end: no repo id, offline, or no token."""
    from huggingface_hub import get_token
    from huggingface_hub.constants import is_offline_mode

    if repo_id is None or not looks_like_repo_id(repo_id):
        raise CheckpointError(f"train.push_to_hub needs {setting}=OWNER/NAME, the Hub repo to push to, got {repo_id!r}")
    if is_offline_mode():
        raise CheckpointError("train.push_to_hub needs the network, but HF_HUB_OFFLINE is set")
    if get_token() is None:
        raise CheckpointError(f"train.push_to_hub needs a Hub token: {TOKEN_HINT}")
