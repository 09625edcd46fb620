"""Every preset in configs/ loads and runs two steps per stage on CPU with the model swapped for a tiny one.

GSM8K presets name hub data sets (openai/gsm8k, whynlp/gsm8k-aug); here they read the local copies under
$COCONAV_TEST_DATA instead (GSM8k-Aug's training set is not there: GSM8K train stands in). Presets that
start from a checkpoint start from this session's tiny run. No preset, docstring or benchmark may point
outside the repository.

Presets inherit (`base: demo.yaml`): each resolves to the config recorded in tests/golden/presets_resolved.json
(record again after a deliberate change: python tests/test_presets.py), no two resolve alike unless one is
the other's base, and each opens with its purpose, hardware, command and results page.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from coconav.config import load_config, preset_chain, to_dict

from conftest import real_data_path

ROOT = Path(__file__).resolve().parents[1]
# The local copy (under $COCONAV_TEST_DATA) of each hub split a preset names.
LOCAL_COPIES = {
    "openai/gsm8k:train": "gsm8k/train.jsonl",
    "openai/gsm8k:test": "gsm8k/test.jsonl",
    "whynlp/gsm8k-aug:train": "gsm8k/train.jsonl",
    "whynlp/gsm8k-aug:validation": "gsm8k_aug/valid.txt",
    "whynlp/gsm8k-aug:test": "gsm8k_aug/test.txt",
    # ProsQA presets name the official repository's files (data/ of facebookresearch/coconut)
    "data/prosqa_valid.json": "prosqa/valid.json",
    "data/prosqa_test.json": "prosqa/test.json",
}
PRESETS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))
TINY_MODEL = [
    "model.name_or_path=scratch-llama",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "model.max_position_embeddings=1024",
]
SHORT = [
    "data.train_size=32",
    "data.validation_size=4",
    "data.test_size=4",
    "train.batch_size=4",
    "train.grad_accum=2",
    "train.first_stage_steps=2",
    "train.steps_per_stage=2",
    "train.final_stage_steps=2",
    "train.epochs_per_stage=null",
    "train.first_stage_epochs=null",
    "train.final_stage_epochs=null",
    "train.warmup_steps=1",
    "train.save_every=0",
    "eval.max_new_tokens=4",
    "eval.batch_size=4",
    "log.progress=false",
    "threads=1",
]


def test_every_preset_is_tested():
    assert {p.name for p in PRESETS} >= {
        "demo.yaml",
        "demo_navigator.yaml",
        "task_arithmetic_coconut.yaml",
        "task_graph_coconut.yaml",
        "gsm8k_gpt2_cot.yaml",
        "gsm8k_gpt2_coconut.yaml",
        "gsm8k_llama3_8b_coconut.yaml",
    }


def final_checkpoint(run: Path) -> Path:
    stages = sorted((run / "checkpoints").glob("stage-*"), key=lambda p: int(p.name.split("-")[1]))
    return stages[-1]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_runs_two_steps(preset: Path, cli, tiny_run: Path, tmp_path: Path):
    cfg = load_config(preset)
    overrides = [f"out_dir={tmp_path / 'run'}", *SHORT]
    if cfg.navigator is not None:  # steers a COCONUT checkpoint: this session's tiny run
        overrides += [
            f"init_from={final_checkpoint(tiny_run)}",
            "ppo.updates=2",
            "ppo.rollout_batch=4",
            "ppo.num_minibatches=2",
            "ppo.eval_every=1",
        ]
    else:
        overrides += TINY_MODEL + ["init_from=null"]
    if cfg.data.task == "files" and cfg.navigator is not None:
        # The tiny run's word-level tokenizer knows only arithmetic-task words: GSM8K questions would be
        # refused as unknown words, so the navigator's PPO plumbing runs on the checkpoint's own task.
        overrides += ["data.task=arithmetic", "data.train=null", "data.validation=null", "data.test=null"]
    elif cfg.data.task == "files" or cfg.data.validation or cfg.data.test:  # files, or a task scored on files
        for split in ("train", "validation", "test"):
            spec = getattr(cfg.data, split)
            if spec is not None:
                assert spec in LOCAL_COPIES, f"{preset.name}: data.{split}={spec} has no local copy for this test"
                overrides.append(f"data.{split}={real_data_path(LOCAL_COPIES[spec])}")
    result = cli("train", "--config", preset, *overrides)
    assert result.rc == 0, result.err[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    if cfg.navigator is not None:
        assert {"navigator", "coconut_fixed", "curve"} <= set(results)
        assert len(results["curve"]) == 2
    else:
        assert results["test"]["num_questions"] == 4
        steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) == 2 * len(cfg.curriculum.stages())  # two optimizer steps in every stage


def test_gsm8k_presets_use_hub_ids() -> None:
    # A fresh clone has no data beside it: GSM8K presets name hub splits, overridable with local files.
    for preset in PRESETS:
        cfg = load_config(preset)
        specs = [s for s in (cfg.data.train, cfg.data.validation, cfg.data.test) if s is not None]
        if cfg.data.task == "files":
            assert specs, preset.name
        assert all(s in LOCAL_COPIES for s in specs), (preset.name, specs)


def test_nothing_points_outside_the_repository() -> None:
    files = [
        *PRESETS,
        *(ROOT / "coconav").rglob("*.py"),
        *(ROOT / "coconav").rglob("*.yaml"),
        *(ROOT / "benchmarks").glob("*.py"),
        ROOT / "benchmarks" / "README.md",
    ]
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if "../shared" in line or "..\\shared" in line
    ]
    assert not offenders, f"paths outside the repository: {offenders}"


# Every preset has one copy, in coconav/configs/ (package data, so that `coconav demo` finds its presets after
# a non-editable install); configs/ at the repository's root is a symlink to that folder, where users find them.
def test_presets_have_one_copy_shipped_with_the_package() -> None:
    import tomllib

    assert (ROOT / "configs").resolve() == (ROOT / "coconav" / "configs").resolve(), (
        "configs/ must link to coconav/configs"
    )
    assert not list((ROOT / "coconav" / "recipes").glob("*.yaml")), "presets live in coconav/configs/ only"
    assert all(p.is_file() and not p.is_symlink() for p in (ROOT / "coconav" / "configs").rglob("*.yaml"))
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]
    assert "configs/*.yaml" in package_data["coconav"]


# -- inheritance: a preset names its base and overrides keys (coconav.config.read_yaml) -------------------------

RESOLVED = ROOT / "tests" / "golden" / "presets_resolved.json"
HEADER = ("# Purpose:", "# Hardware:", "# Command", "# Results:")


def resolve_presets() -> dict[str, dict]:
    """Every preset's resolved config (its bases merged in, the defaults filled in), by file name."""
    return {preset.name: to_dict(load_config(preset)) for preset in PRESETS}


def flat(tree: dict, prefix: str = "") -> dict[str, str]:
    """'section.key' -> the value as JSON (so that 3 and 3.0, or 1 and true, stay apart)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def test_every_preset_resolves_to_its_recorded_config() -> None:
    """How presets are written (what they inherit) never changes what they resolve to unnoticed: every field
    recorded in tests/golden/presets_resolved.json resolves to the recorded value (fields added to the schema
    since are not checked). A deliberate change records the presets again: python tests/test_presets.py"""
    recorded, now = json.loads(RESOLVED.read_text(encoding="utf-8")), resolve_presets()
    assert sorted(now) == sorted(recorded), "presets added or removed: record them with python tests/test_presets.py"
    for name in sorted(recorded):
        want, got = flat(recorded[name]), flat(now[name])
        changed = {key: (value, got.get(key, "<missing>")) for key, value in want.items() if got.get(key) != value}
        assert not changed, f"{name}: (recorded, now) {changed}"


def test_no_two_presets_resolve_alike_unless_one_is_the_others_base() -> None:
    """A preset that resolves like another (out_dir aside) is a copy kept equal by hand: it should name the
    other as its base, or be deleted."""
    now = {name: {k: v for k, v in cfg.items() if k != "out_dir"} for name, cfg in resolve_presets().items()}
    bases = {preset.name: {p.name for p in preset_chain(preset)[1:]} for preset in PRESETS}
    alike = [
        (a, b)
        for a, b in itertools.combinations(sorted(now), 2)
        if now[a] == now[b] and a not in bases[b] and b not in bases[a]
    ]
    assert not alike, f"presets that resolve to the same run: {alike}"


def test_bases_are_presets_beside_them() -> None:
    """Every base is a preset in the same folder (so that the package ships the whole family)."""
    for preset in PRESETS:
        for base in preset_chain(preset)[1:]:
            assert base.resolve().parent == preset.resolve().parent and base.resolve() in {
                p.resolve() for p in PRESETS
            }, (preset.name, base)
    assert any(len(preset_chain(p)) > 1 for p in PRESETS), "no preset inherits: read_yaml's merge is untested here"


def test_every_preset_opens_with_purpose_hardware_command_and_results() -> None:
    for preset in PRESETS:
        lines = preset.read_text(encoding="utf-8").splitlines()
        header = list(itertools.takewhile(lambda line: line.startswith("#"), lines))
        missing = [field for field in HEADER if not any(line.startswith(field) for line in header)]
        assert not missing, f"{preset.name}: its opening comment lacks {missing}"
        assert header[0].startswith("# Purpose:"), preset.name


if __name__ == "__main__":  # records every preset's resolved config (a deliberate change)
    RESOLVED.write_text(json.dumps(resolve_presets(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"recorded {RESOLVED}")
