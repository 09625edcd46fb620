"""The demo's rows: the config chooses them, the vote baselines join the table, results.json and the plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from coconav.config import DemoConfig, RunConfig, load_config
from coconav.errors import ConfigError
from coconav.recipes import demo

REPO = Path(__file__).resolve().parents[2]
HARD = REPO / "configs" / "demo_hard.yaml"
TINY = [
    "threads=1",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "data.train_size=48",
    "data.validation_size=6",
    "data.test_size=6",
    "data.max_difficulty=2",
    "curriculum.max_stage=2",
    "train.batch_size=8",
    "train.grad_accum=1",
    "train.first_stage_steps=2",
    "train.steps_per_stage=1",
    "train.final_stage_steps=1",
    "train.warmup_steps=1",
    "eval.max_new_tokens=6",
    "log.progress=false",
]


def test_the_standard_demo_keeps_its_four_rows():
    assert DemoConfig().rows == list(demo.METHODS)
    assert load_config(REPO / "configs" / "demo.yaml").demo == DemoConfig()


def test_the_main_demos_navigator_halts_with_memory_and_does_not_steer():
    """Steering was chosen off on the demo's validation split (the preset's header); the feature stays."""
    nav = load_config(REPO / "configs" / "demo_navigator.yaml").navigator
    assert not nav.steering and nav.episodic_memory and nav.persistent_memory


def test_the_hard_preset_asks_for_the_vote_rows_and_its_own_navigator():
    cfg = load_config(HARD)
    assert {"cot_vote", "coconut_noise_vote", "coconut_sample_vote", "navigator"} <= set(cfg.demo.rows)
    assert demo.navigator_preset(cfg, str(HARD), None) == str(REPO / "configs" / "demo_hard_halting.yaml")
    assert demo.navigator_preset(cfg, str(HARD), "mine.yaml") == "mine.yaml"  # --navigator-config wins
    assert (
        load_config(REPO / "configs" / "demo_hard_halting.yaml").navigator.max_thoughts
        == cfg.curriculum.max_stage * cfg.curriculum.thoughts_per_step
    )  # the same thought budget as COCONUT


def test_navigator_multi_needs_its_preset_and_the_hard_demo_names_one():
    with pytest.raises(ConfigError, match="navigator_multi_config"):
        DemoConfig(rows=["coconut", "navigator_multi"])
    cfg = RunConfig(demo=DemoConfig(rows=["coconut", "navigator_multi"], navigator_multi_config="m.yaml"))
    assert demo.demo_rows(cfg, with_navigator=True) == ["coconut", "navigator_multi"]
    assert demo.demo_rows(cfg, with_navigator=False) == ["coconut"]  # --no-navigator drops the navigator rows
    hard = load_config(HARD)
    multi = demo.navigator_preset(hard, str(HARD), None, hard.demo.navigator_multi_config)
    assert "navigator_multi" in hard.demo.rows and multi == str(REPO / "configs" / "demo_hard_navigator_multi.yaml")
    preset = load_config(multi)
    assert preset.ppo.answer_trajectories == hard.demo.num_trajectories  # equal K with the vote rows
    assert preset.navigator.max_thoughts == hard.curriculum.max_stage * hard.curriculum.thoughts_per_step


def test_the_navigator_multi_row_trains_and_reports_k_trajectories(tmp_path: Path):
    preset = tmp_path / "multi.yaml"
    preset.write_text("""
navigator: {hidden: 16, action_dim: 4, max_thoughts: 2, min_thoughts: 0, group_memory: true}
ppo: {updates: 2, rollout_batch: 4, num_trajectories: 3, advantage: group, num_minibatches: 1, ppo_epochs: 1,
      eval_every: 100}
eval: {max_new_tokens: 6, batch_size: 8}
""")
    rows = "demo.rows=[coconut,navigator_multi]"
    results = demo.run(
        out=tmp_path / "d",
        config=str(HARD),
        overrides=[*TINY, rows, "demo.num_trajectories=3", f"demo.navigator_multi_config={preset}"],
    )
    multi = results["methods"]["navigator_multi"]
    assert multi["mean_trajectories"] == 3.0 and multi["num_questions"] == 6 and multi["mean_forward_passes"] > 0
    assert set(FRONTIER_KEYS) <= set(multi)  # measured against the fixed budgets like every navigator row
    assert multi["compute_per_question"] > multi["mean_forward_passes"]  # + the navigator's arithmetic
    saved = json.loads((tmp_path / "d" / "results.json").read_text())
    assert saved["rows"]["navigator_multi"]["num_trajectories"] == 3
    assert (tmp_path / "d" / "navigator_multi" / "results.json").is_file()


def test_the_hard_demo_navigator_row_is_the_halting_only_cold_start_preset():
    hard = demo.demo_config(str(HARD), 0, Path("runs/x"), [])
    preset = demo.navigator_preset(hard, str(HARD), None, hard.demo.navigator_config)
    nav = demo.navigator_config(hard, Path("runs/x"), Path("c"), preset)
    assert Path(preset).name == "demo_hard_halting.yaml"
    assert not nav.navigator.steering and nav.ppo.cold_start_questions > 0
    assert not (nav.navigator.episodic_memory or nav.navigator.persistent_memory or nav.navigator.group_memory)


def test_the_steering_hard_presets_train_the_same_navigator():
    # the steering navigator and navigator_multi presets differ only in how they are evaluated: one run serves both
    hard = demo.demo_config(str(HARD), 0, Path("runs/x"), [])
    single = demo.navigator_config(hard, Path("runs/x"), Path("c"), str(REPO / "configs" / "demo_hard_navigator.yaml"))
    multi = demo.navigator_config(
        hard,
        Path("runs/x"),
        Path("c"),
        str(REPO / "configs" / "demo_hard_navigator_multi.yaml"),
        name="navigator_multi",
    )
    assert demo.training_settings(single) == demo.training_settings(multi)
    # both thresholds chosen in the one run: K = 1 for the navigator rows (the K = 1 preset's budget), K = 5 for multi
    assert multi.navigator.pass_budget == single.navigator.pass_budget and multi.navigator.multi_pass_budget is not None
    other = dataclasses.replace(single, ppo=dataclasses.replace(single.ppo, thought_cost=0.5))
    assert demo.training_settings(other) != demo.training_settings(single)  # a training setting tells them apart


def test_navigator_and_navigator_multi_rows_share_one_training_run(tmp_path: Path, monkeypatch):
    from coconav.recipes import train_navigator

    common = """
navigator: {hidden: 16, action_dim: 4, max_thoughts: 2, min_thoughts: 0, pass_budget: 6.0,
            halt_threshold_grid: [0.05, 0.95]%s}
ppo: {updates: 2, rollout_batch: 4, num_trajectories: 3, advantage: group, num_minibatches: 1, ppo_epochs: 1,
      eval_every: 100%s}
eval: {max_new_tokens: 6, batch_size: 8}
"""
    single, multi = tmp_path / "single.yaml", tmp_path / "multi.yaml"
    single.write_text(common % ("", ", eval_trajectories: 1"))
    multi.write_text(common % (", multi_pass_budget: 20.0, inference_halting: sample", ", fusion: value"))
    trained = []
    real = train_navigator.train

    def spy(cfg, *args, **kwargs):
        trained.append(cfg.out_dir)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(train_navigator, "train", spy)
    rows = "demo.rows=[coconut,navigator,navigator_multi]"
    results = demo.run(
        out=tmp_path / "d",
        config=str(HARD),
        navigator=str(single),
        overrides=[*TINY, rows, "demo.num_trajectories=3", f"demo.navigator_multi_config={multi}"],
    )
    assert trained == [str(tmp_path / "d" / "navigator_multi")]  # one navigator trained, not two
    assert not (tmp_path / "d" / "navigator").exists()
    run = json.loads((tmp_path / "d" / "navigator_multi" / "results.json").read_text())
    saved = json.loads((tmp_path / "d" / "results.json").read_text())
    # the row names stay: the navigator rows are the run's K = 1 rows, navigator_multi its K = 3 row
    assert list(saved["methods"]) == ["coconut", "navigator", "navigator_multi"]
    assert saved["methods"]["navigator"]["accuracy"] == run["navigator"]["accuracy"]
    assert saved["methods"]["navigator"]["mean_forward_passes"] == run["navigator"]["mean_forward_passes"]
    assert (
        saved["navigator"]["no_memory"] == run["navigator_no_memory"] and saved["navigator"]["run"] == "navigator_multi"
    )
    assert saved["methods"]["navigator_multi"]["mean_trajectories"] == 3.0
    # each row's threshold was chosen at its own K, and each is reported with its row
    assert (
        saved["navigator"]["pass_budget"]["num_trajectories"] == 1 and saved["navigator"]["pass_budget"]["budget"] == 6
    )
    assert saved["rows"]["navigator_multi"]["pass_budget"]["num_trajectories"] == 3
    assert saved["rows"]["navigator_multi"]["pass_budget"]["budget"] == 20
    assert results["methods"]["navigator"]["num_questions"] == 6


@pytest.mark.parametrize(
    "rows, message",
    [(["cot"], "must include 'coconut'"), (["coconut", "bogus"], "unknown row"), (["coconut", "coconut"], "twice")],
)
def test_bad_rows_are_config_errors(rows, message):
    with pytest.raises(ConfigError, match=message):
        DemoConfig(rows=rows)


def test_vote_rows_run_end_to_end(tmp_path: Path, monkeypatch):
    plotted = {}
    real = demo.plot_demo

    def spy(results, out):
        plotted.update(results["methods"])
        return real(results, out)

    monkeypatch.setattr(demo, "plot_demo", spy)
    rows = "demo.rows=[cot,coconut,cot_vote,coconut_noise_vote,coconut_sample_vote]"
    results = demo.run(
        out=tmp_path / "d",
        config=str(HARD),
        overrides=[
            *TINY,
            rows,
            "demo.num_trajectories=3",
            "demo.noise_grid=[0.0,0.3]",
            "demo.sample_vote_temperatures=[0.5,2.0]",
        ],
    )
    assert list(results["methods"]) == ["cot", "coconut", "cot_vote", "coconut_noise_vote", "coconut_sample_vote"]
    saved = json.loads((tmp_path / "d" / "results.json").read_text())
    assert list(saved["methods"]) == list(results["methods"]) and list(plotted) == list(results["methods"])
    for name, m in saved["methods"].items():
        assert m["mean_forward_passes"] > 0 and m["num_questions"] == 6, name
    coconut, noise = saved["methods"]["coconut"], saved["methods"]["coconut_noise_vote"]
    assert noise["mean_trajectories"] == 3.0 and saved["methods"]["cot_vote"]["mean_trajectories"] == 3.0
    assert noise["mean_thoughts"] == 3 * coconut["mean_thoughts"]  # 3 trajectories of the same fixed count
    detail = saved["rows"]["coconut_noise_vote"]
    assert detail["noise_grid"] == [0.0, 0.3] and detail["noise_sigma"] in (0.0, 0.3)
    assert detail["noise_selected_on"] == "validation" and set(detail["noise_validation"]) == {"0.0", "0.3"}
    assert saved["rows"]["cot_vote"]["temperature"] == 0.7 and saved["rows"]["num_trajectories"] == 3
    sampled = saved["rows"]["coconut_sample_vote"]
    assert sampled["temperature"] in (0.5, 2.0) and sampled["temperature_selected_on"] == "validation"
    assert set(sampled["temperature_validation"]) == {"0.5", "2.0"}
    assert saved["methods"]["coconut_sample_vote"]["mean_thoughts"] == 3 * coconut["mean_thoughts"]
    assert (tmp_path / "d" / "accuracy_vs_forward_passes.png").is_file()
    assert not (tmp_path / "d" / "no_cot").exists()  # a row not asked for is not trained
    # the frontier is measured even without a navigator row; only navigator rows are compared with it
    assert [p["num_thoughts"] for p in saved["frontier"]["points"]] == list(range(coconut_thoughts(saved) + 1))
    assert not any(set(FRONTIER_KEYS) & set(m) for m in saved["methods"].values())
    for name in (
        "cot_vote",
        "coconut_noise_vote",
        "coconut_sample_vote",
    ):  # one shared prefill: passes = 1 + the chains' own work
        assert saved["methods"][name]["compute_per_question"] == saved["methods"][name]["mean_forward_passes"]


FRONTIER_KEYS = (
    "envelope_accuracy_at_compute",
    "gain_over_frontier",
    "oracle_accuracy_at_compute",
    "length_rule_accuracy_at_compute",
    "gain_over_length_rule",
    "passes_saved_at_equal_accuracy",
)


def coconut_thoughts(saved: dict) -> int:
    return saved["num_thoughts"]  # the last stage's fixed count: the sweep runs k = 0..it


def test_the_standard_demo_reports_the_frontier_and_the_navigator_against_it(tmp_path: Path):
    preset = tmp_path / "nav.yaml"
    preset.write_text("""
navigator: {hidden: 16, action_dim: 4, max_thoughts: 2, min_thoughts: 0, pass_budget: 9.0,
            halt_threshold_grid: [0.2, 0.8]}
ppo: {updates: 2, rollout_batch: 4, num_minibatches: 1, ppo_epochs: 1, eval_every: 100}
eval: {max_new_tokens: 6, batch_size: 8}
""")
    results = demo.run(
        out=tmp_path / "d",
        config=str(REPO / "configs" / "demo.yaml"),
        navigator=str(preset),
        overrides=[*TINY, "demo.rows=[coconut,navigator]"],
    )
    saved = json.loads((tmp_path / "d" / "results.json").read_text())
    front = saved["frontier"]
    assert set(front) == {"points", "envelope", "oracle", "difficulty_oracle", "length_rule", "length_rule_fit"}
    # the length rule: one budget per difficulty, fitted on the 6 validation questions, applied to the test ones
    assert front["length_rule_fit"] == {"group_by": "difficulty", "num_questions": 6, "in_sample": False}
    for vertex in front["length_rule"]:
        assert set(vertex["budgets"].values()) <= {0, 1, 2} and 0.0 <= vertex["accuracy"] <= 1.0
    k = coconut_thoughts(saved)
    assert k == 2 and [p["num_thoughts"] for p in front["points"]] == [0, 1, 2]
    # the envelope ends at the best fixed budget's accuracy; the oracles reach at least as high
    best = max(p["accuracy"] for p in front["points"])
    assert front["envelope"][-1]["accuracy"] == pytest.approx(best)
    assert front["oracle"][-1]["accuracy"] >= front["difficulty_oracle"][-1]["accuracy"] >= best - 1e-9
    # the last point is the coconut row itself (the same checkpoint, count and test set)
    coconut = saved["methods"]["coconut"]
    assert front["points"][-1]["accuracy"] == coconut["accuracy"]
    assert front["points"][-1]["mean_forward_passes"] == coconut["mean_forward_passes"]
    nav = saved["methods"]["navigator"]
    assert set(FRONTIER_KEYS) <= set(nav) and nav == results["methods"]["navigator"]
    assert nav["compute_per_question"] > nav["mean_forward_passes"]  # + the navigator's arithmetic
    if nav["envelope_accuracy_at_compute"] is not None:
        assert nav["gain_over_frontier"] == pytest.approx(nav["accuracy"] - nav["envelope_accuracy_at_compute"])
        assert nav["oracle_accuracy_at_compute"] >= nav["envelope_accuracy_at_compute"] - 1e-9
    if nav["length_rule_accuracy_at_compute"] is not None:
        assert nav["gain_over_length_rule"] == pytest.approx(nav["accuracy"] - nav["length_rule_accuracy_at_compute"])
    assert all("compute_per_question" in t for t in saved["navigator"]["pass_budget"]["tried"])
    assert (tmp_path / "d" / "accuracy_vs_forward_passes.png").is_file()
    # the checkpoint behind each row: its test accuracy in its card's model-index, and the figure written after it
    from huggingface_hub import ModelCard

    from coconav.io.checkpoint import latest_checkpoint
    from coconav.io.hub import PLOT_FILE

    for row in ("coconut", "navigator"):
        folder = latest_checkpoint(tmp_path / "d" / row)
        card = ModelCard.load(folder / "README.md")
        [test] = [r.metric_value for r in card.data.eval_results if r.dataset_split == "test"]
        assert test == pytest.approx(saved["methods"][row]["accuracy"], abs=1e-4)
        assert f"]({PLOT_FILE})" in card.text and (folder / PLOT_FILE).is_file(), row


def test_a_missing_navigator_preset_fails_before_any_training(tmp_path: Path):
    preset = tmp_path / "demo_bad.yaml"
    preset.write_text(f"base: {REPO / 'configs' / 'demo.yaml'}\ndemo:\n  navigator_config: no_such_navigator.yaml\n")
    with pytest.raises(ConfigError, match="no_such_navigator"):
        demo.run(out=tmp_path / "out", config=str(preset), overrides=TINY)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_a_coconut_run_without_stage_zero_gets_its_own_cot_run(tmp_path: Path):
    cfg = demo.demo_config(None, 0, tmp_path, [*TINY, "curriculum.no_curriculum=true"])
    assert not demo.trains_stage_zero(cfg)
    cot = demo.cot_config(cfg, tmp_path)
    assert cot.curriculum.mode == "cot" and cot.curriculum.stages() == [0]
    assert cot.out_dir == str(tmp_path / "cot") and cot.curriculum.thought_loss_weight == 0.0
    assert demo.trains_stage_zero(demo.demo_config(None, 0, tmp_path, TINY))


def test_the_table_shows_the_papers_numbers_beside_the_rows():
    row = {"accuracy": 0.5, "accuracy_by_difficulty": {"3": 0.5}, "mean_thoughts": 6.0, "mean_new_tokens": 7.0,
           "mean_forward_passes": 14.0, "seconds_per_question": 0.01}  # fmt: skip
    table = demo.format_table({"cot": row, "coconut": row}, {"coconut": 97.0})
    head, cot_line, coconut_line = table.splitlines()
    assert "paper %" in head and "97.0" in coconut_line and " - " in cot_line
    assert "paper %" not in demo.format_table({"cot": row})
