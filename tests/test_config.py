"""Config errors through the CLI (`coconav train --config ...`): one line, exit 2, the key or file named.

Also: every preset in configs/ loads, and loaded values round-trip through save_config.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coconav.config import RunConfig, load_config, save_config, to_dict
from coconav.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEMO_PRESET = REPO / "configs" / "demo.yaml"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- YAML files -------------------------------------------------------------------------------


def test_unknown_key_in_yaml(cli, tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.yaml", "seed: 1\ntrain:\n  lr: 1.0e-3\n  lrr: 1\n")
    msg = cli("train", "--config", cfg).error()
    assert "unknown config key 'train.lrr'" in msg
    assert "lr" in msg.split("allowed:")[1]  # lists what is allowed
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text", ["train:\n  lrr: 1\n", "train:\n  batch_size: abc\n"])
def test_yaml_key_errors_name_the_file(cli, tmp_path: Path, text: str) -> None:
    cfg = write(tmp_path / "preset.yaml", text)
    assert str(cfg) in cli("train", "--config", cfg).error()


def test_wrong_type_in_yaml(cli, tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.yaml", "train:\n  batch_size: abc\n")
    assert cli("train", "--config", cfg).error() == f"{cfg}:2: train.batch_size: expected an integer, got 'abc'"


def test_section_that_is_not_a_mapping(cli, tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.yaml", "model: 3\n")
    assert cli("train", "--config", cfg).error() == f"{cfg}:1: model: expected a mapping of ModelConfig fields, got 3"


def test_yaml_syntax_error_names_file_and_line(cli, tmp_path: Path) -> None:
    cfg = write(tmp_path / "broken.yaml", "seed: 1\ntrain:\n  lr: 1.0e-3\n  betas: [0.9, 0.98\nmodel: {}\n")
    msg = cli("train", "--config", cfg).error()
    assert msg.startswith(f"{cfg}:5: YAML syntax error: ")


def test_yaml_tab_indent_names_line(cli, tmp_path: Path) -> None:
    cfg = write(tmp_path / "tabs.yaml", "seed: 1\ntrain:\n\tlr: 1\n")
    msg = cli("train", "--config", cfg).error()
    assert msg.startswith(f"{cfg}:3: YAML syntax error: ")


def test_missing_config_file(cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli("train", "--config", missing).error() == f"config file not found: {missing}"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_top_level_not_a_mapping(cli, tmp_path: Path, text: str) -> None:
    cfg = write(tmp_path / "list.yaml", text)
    assert cli("train", "--config", cfg).error() == f"{cfg}: the top level must be a mapping of config sections"


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# only a comment\n", "---\n"], ids=["empty", "blank", "comment", "document"]
)
def test_empty_config_file_is_an_error(cli, tmp_path: Path, text: str) -> None:
    cfg = write(tmp_path / "empty.yaml", text)
    assert (
        cli("train", "--config", cfg).error()
        == f"{cfg}: the config file is empty (expected a mapping of config sections such as 'model:')"
    )


def test_invalid_utf8_config(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes(b"seed: 1\n# caf\xe9\n")
    assert cli("train", "--config", cfg).error() == f"{cfg}: not valid UTF-8 text"


def test_train_without_config(cli) -> None:
    assert cli("train").error() == "train needs --config FILE.yaml (or --resume RUN)"


# -- overrides --------------------------------------------------------------------------------


def test_unknown_key_as_override(cli) -> None:
    msg = cli("train", "--config", DEMO_PRESET, "train.lrr=1").error()
    assert msg.startswith("unknown config key 'train.lrr' (allowed: batch_size, ")


def test_unknown_section_as_override(cli) -> None:
    msg = cli("train", "--config", DEMO_PRESET, "trian.lr=1").error()
    assert msg.startswith("unknown config key 'trian' (allowed: out_dir, ")


def test_wrong_type_as_override(cli) -> None:
    assert (
        cli("train", "--config", DEMO_PRESET, "train.batch_size=abc").error()
        == "train.batch_size: expected an integer, got 'abc'"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=1.5", "train.batch_size: expected an integer, got 1.5"),
        ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
        ("log.progress=maybe", "log.progress: expected true or false, got 'maybe'"),
        ("curriculum.mode=foo", "curriculum.mode: 'foo' is not one of 'cot' | 'no_cot' | 'coconut' | 'pause'"),
    ],
)
def test_more_wrong_types_as_override(cli, override: str, message: str) -> None:
    assert cli("train", "--config", DEMO_PRESET, override).error() == message


def test_negative_lr(cli) -> None:
    assert cli("train", "--config", DEMO_PRESET, "train.lr=-1").error() == "train.lr must be > 0, got -1.0"


def test_mix_prob_above_one(cli) -> None:
    assert (
        cli("train", "--config", DEMO_PRESET, "curriculum.mix_prob=2").error()
        == "curriculum.mix_prob must be in [0, 1], got 2.0"
    )


def test_batch_size_not_multiple_of_grad_accum(cli) -> None:
    assert (
        cli("train", "--config", DEMO_PRESET, "train.grad_accum=4", "train.batch_size=6").error()
        == "train.batch_size (6) must be a multiple of train.grad_accum (4)"
    )


def test_compile_with_fsdp_is_refused(cli) -> None:
    assert (
        cli("train", "--config", DEMO_PRESET, "train.compile=true", "train.fsdp=true").error()
        == "train.compile does not work with train.fsdp: set one of them to false"
    )


def test_override_without_equals(cli) -> None:
    assert (
        cli("train", "--config", DEMO_PRESET, "train.lr").error() == "override 'train.lr' must look like key.sub=value"
    )


def test_override_into_a_scalar(cli) -> None:
    assert cli("train", "--config", DEMO_PRESET, "seed.x=1").error() == "override 'seed.x=1': 'seed' is not a section"


def test_config_errors_write_nothing(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli("train", "--config", DEMO_PRESET, f"out_dir={out}", "train.lr=-1").error()
    assert not out.exists()


# -- the library API --------------------------------------------------------------------------


def test_load_config_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^unknown config key 'model.hidden'"):
        load_config(DEMO_PRESET, ["model.hidden=3"])


def test_overrides_apply_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(DEMO_PRESET, ["train.lr=3e-4", "curriculum.mode=cot", "eval.num_thoughts=null", "seed=7"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.curriculum.mode == "cot" and cfg.seed == 7 and cfg.eval.num_thoughts is None
    save_config(cfg, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)


# -- presets ----------------------------------------------------------------------------------


PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_presets() -> None:
    assert any(p.name == "demo.yaml" for p in PRESETS)


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_loads(preset: Path) -> None:
    cfg = load_config(preset.resolve())  # symlinks followed
    assert isinstance(cfg, RunConfig)
    assert cfg.curriculum.stages()  # something to train


@pytest.mark.parametrize(
    "override, message",
    [
        ("navigator.max_trajectories=0", "navigator.max_trajectories must be in [1, 64], got 0"),
        ("navigator.temperature_spread=0.5", "navigator.temperature_spread must be >= 1, got 0.5"),
        (
            "navigator.inference_halting=always",
            "navigator.inference_halting: 'always' is not one of 'greedy' | 'sample'",
        ),
        (
            "navigator.trajectories_budget=20",
            "navigator.trajectories_budget must be in [1, max_trajectories=16] or null, got 20.0",
        ),
        ("navigator.steer_scale=norm", "navigator.steer_scale: 'norm' is not one of 'none' | 'rms'"),
        (
            "navigator.temperature_schedule=step",
            "navigator.temperature_schedule: 'step' is not one of 'linear' | 'cosine' | 'exponential'",
        ),
        ("ppo.num_trajectories=17", "ppo.num_trajectories must be in [1, 16], got 17"),
        ("ppo.eval_trajectories=17", "ppo.eval_trajectories must be in [1, 16] or null, got 17"),
        ("ppo.num_trajectories=0", "ppo.num_trajectories must be in [1, 16], got 0"),
        ("navigator.max_trajectories=4", "ppo.num_trajectories (8) must be <= navigator.max_trajectories (4)"),
    ],
)
def test_multi_trajectory_settings_are_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            DEMO_PRESET,
            ["init_from=x", "navigator.hidden=8", "ppo.num_trajectories=8", override]
            if override.startswith("navigator.max")
            else ["init_from=x", "navigator.hidden=8", override],
        )
    assert str(err.value) == message


def test_negative_length_pool(cli) -> None:
    assert cli("train", "--config", DEMO_PRESET, "train.length_pool=-1").error() == (
        "train.length_pool must be >= 0 (0: batches drawn at random; k: pools of k global batches grouped by "
        "length), got -1"
    )


def test_the_halting_threshold_at_k_is_the_multi_one_only_when_set_and_k_is_not_one():
    from coconav.config import NavigatorConfig

    nav = NavigatorConfig(halt_threshold=0.4, multi_halt_threshold=0.7)
    assert nav.halt_threshold_at(1) == 0.4  # one trajectory: the K = 1 threshold
    assert nav.halt_threshold_at(5) == 0.7 and nav.halt_threshold_at("auto") == 0.7  # K != 1: the multi one
    assert NavigatorConfig(halt_threshold=0.4).halt_threshold_at(5) == 0.4  # unset: the K = 1 threshold


# -- malformed files the parser alone would accept or crash on ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "first"),
    [
        ("seed: 1\ntrain:\n  lr: 1.0e-3\n  batch_size: 8\n  lr: 1.0e-4\n", 5, 3),  # inside a section
        ("seed: 1\nseed: 2\n", 2, 1),  # at the top level
    ],
)
def test_a_key_given_twice_is_refused_before_anything_is_written(cli, tmp_path: Path, text, line, first) -> None:
    # PyYAML keeps the last value silently: the run would go ahead with one of two settings
    cfg = write(tmp_path / "dup.yaml", text + f"out_dir: {tmp_path / 'run'}\n")
    key = "lr" if "lr: 1.0e-4" in text else "seed"
    assert cli("train", "--config", cfg).error() == (
        f"{cfg}:{line}: key '{key}' is given twice in one section (first on line {first}): keep one"
    )
    assert not (tmp_path / "run").exists()


def test_the_same_key_in_two_sections_is_fine(tmp_path: Path) -> None:
    cfg = write(tmp_path / "ok.yaml", "train:\n  lr: 1.0e-3\nppo:\n  lr: 1.0e-4\n")
    assert load_config(cfg).ppo.lr == 1e-4 and load_config(cfg).train.lr == 1e-3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: " + "[" * 5000 + "]" * 5000 + "\n", "YAML nested too deeply"),  # RecursionError in the parser
        ("seed: " + "1" * 5000 + "\n", "a value cannot be read: Exceeds the limit"),  # int() refuses 4300+ digits
        ("train:\n  lr: 1e400\n", "train.lr: expected a finite number, got '1e400'"),  # inf
        ("train:\n  lr: .nan\n", "train.lr: expected a finite number, got nan"),
        ("seed: 99999999999999999999\n", "seed must be in [0, 2**32), got 99999999999999999999"),
    ],
    ids=["deep", "long-int", "inf", "nan", "huge-seed"],
)
def test_values_python_cannot_hold_are_one_line_errors(cli, tmp_path: Path, text: str, message: str) -> None:
    cfg = write(tmp_path / "bad.yaml", text)
    assert message in cli("train", "--config", cfg).error()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=1e400", "train.lr: expected a finite number, got '1e400'"),
        ("train.lr=nan", "train.lr: expected a finite number, got 'nan'"),
        ("seed=99999999999999999999999", "seed must be in [0, 2**32), got 99999999999999999999999"),
        ("seed=-1", "seed must be in [0, 2**32), got -1"),
        ("seed=" + "9" * 5000, "override 'seed': the value cannot be read (Exceeds the limit"),
        ("train.betas=" + "[" * 3000, "override 'train.betas': the value cannot be read (maximum recursion depth"),
    ],
    ids=["inf", "nan", "huge-seed", "negative-seed", "long-int", "deep"],
)
def test_overrides_python_cannot_hold_are_one_line_errors(cli, override: str, message: str) -> None:
    assert cli("train", "--config", DEMO_PRESET, override).error().startswith(message)


# -- inheritance: `base: OTHER.yaml` ----------------------------------------------------------------------


def test_a_preset_inherits_its_base_and_overrides_keys(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "seed: 1\ntrain:\n  lr: 1.0e-3\n  batch_size: 64\n  betas: [0.9, 0.98]\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "middle.yaml", "base: ../root.yaml\ntrain:\n  lr: 3.0e-4\n  betas: [0.8, 0.9]\n")
    child = write(
        tmp_path / "sub" / "child.yaml", "base: middle.yaml  # beside it\nseed: 2\neval:\n  num_thoughts: 3\n"
    )
    cfg = load_config(child)
    assert cfg.seed == 2 and cfg.eval.num_thoughts == 3  # its own keys
    assert cfg.train.lr == 3e-4 and cfg.train.betas == [0.8, 0.9]  # the middle's: a list is replaced whole
    assert cfg.train.batch_size == 64  # the root's, kept beside the overridden keys of its section
    # the saved config is resolved: no base, loads on its own to the same run
    save_config(cfg, tmp_path / "config.yaml")
    assert "base" not in (tmp_path / "config.yaml").read_text() and load_config(tmp_path / "config.yaml") == cfg


def test_null_in_a_preset_replaces_its_bases_value(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "train:\n  first_stage_epochs: 25\n")
    child = write(tmp_path / "child.yaml", "base: root.yaml\ntrain:\n  first_stage_epochs: null\n")
    assert load_config(tmp_path / "root.yaml").train.first_stage_epochs == 25.0
    assert load_config(child).train.first_stage_epochs is None


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "base: nope.yaml\n"}, "{a}: base preset not found: {dir}/nope.yaml"),
        ({"a.yaml": "base: a.yaml\n"}, "{a}: its bases lead back to a preset already read ({a} -> {a})"),
        (
            {"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"},
            "{a}: its bases lead back to a preset already read ({a} -> {dir}/b.yaml -> {a})",
        ),
        ({"a.yaml": "base: [b.yaml]\n"}, "{a}: 'base' must name a preset file (e.g. base: demo.yaml), got ['b.yaml']"),
    ],
    ids=["missing", "itself", "cycle", "not-a-name"],
)
def test_bad_bases_are_one_line_errors(cli, tmp_path: Path, files: dict, message: str) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    a = tmp_path / "a.yaml"
    assert cli("train", "--config", a).error() == message.format(a=a, dir=tmp_path)


def test_an_error_in_a_base_names_the_base_and_its_line(cli, tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "seed: 1\ntrain:\n  lr: -1.0\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nseed: 2\n")
    assert cli("train", "--config", child).error() == f"{base}:3: train.lr must be > 0, got -1.0"
    write(tmp_path / "dup.yaml", "seed: 1\nseed: 2\n")
    child = write(tmp_path / "child2.yaml", "base: dup.yaml\n")
    assert cli("train", "--config", child).error().startswith(f"{tmp_path / 'dup.yaml'}:2: key 'seed' is given twice")


# -- the library's errors are ValueErrors ---------------------------------------------------------------


def test_every_coconav_error_is_a_value_error() -> None:
    from coconav import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.CoconavError)]
    assert len(classes) >= 5 and all(issubclass(c, ValueError) for c in classes), classes
    assert issubclass(errors.InputTypeError, TypeError)  # a question that is not a string
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(DEMO_PRESET, ["model.hidden=3"])
