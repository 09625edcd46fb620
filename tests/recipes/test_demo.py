"""The demo's rows: the config chooses them, the vote baselines join the table, results.json and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coconav.config import DemoConfig, RunConfig, load_config
from coconav.errors import ConfigError
from coconav.recipes import demo

REPO = Path(__file__).resolve().parents[2]
HARD = REPO / "configs" / "demo_hard.yaml"
TINY = ["threads=1", "model.hidden_size=16", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=32",
        "data.train_size=48", "data.validation_size=6", "data.test_size=6", "data.max_difficulty=2",
        "curriculum.max_stage=2", "train.batch_size=8", "train.grad_accum=1", "train.first_stage_steps=2",
        "train.steps_per_stage=1", "train.final_stage_steps=1", "train.warmup_steps=1", "eval.max_new_tokens=6",
        "log.progress=false"]


def test_the_standard_demo_keeps_its_four_rows():
    assert DemoConfig().rows == list(demo.METHODS)
    assert load_config(REPO / "coconav" / "recipes" / "demo.yaml").demo == DemoConfig()


def test_the_hard_preset_asks_for_the_vote_rows_and_its_own_navigator():
    cfg = load_config(HARD)
    assert {"cot_vote", "coconut_noise_vote", "navigator"} <= set(cfg.demo.rows)
    assert demo.navigator_preset(cfg, str(HARD), None) == str(REPO / "configs" / "demo_hard_navigator.yaml")
    assert demo.navigator_preset(cfg, str(HARD), "mine.yaml") == "mine.yaml"  # --navigator-config wins
    assert load_config(REPO / "configs" / "demo_hard_navigator.yaml").navigator.max_thoughts == \
        cfg.curriculum.max_stage * cfg.curriculum.thoughts_per_step  # the same thought budget as COCONUT


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
    results = demo.run(out=tmp_path / "d", config=str(HARD), overrides=[*TINY, rows, "demo.num_trajectories=3",
                                                                          f"demo.navigator_multi_config={preset}"])
    multi = results["methods"]["navigator_multi"]
    assert multi["mean_trajectories"] == 3.0 and multi["num_questions"] == 6 and multi["mean_forward_passes"] > 0
    saved = json.loads((tmp_path / "d" / "results.json").read_text())
    assert saved["rows"]["navigator_multi"]["num_trajectories"] == 3
    assert (tmp_path / "d" / "navigator_multi" / "results.json").is_file()


@pytest.mark.parametrize("rows, message", [(["cot"], "must include 'coconut'"), (["coconut", "bogus"], "unknown row"),
                                           (["coconut", "coconut"], "twice")])
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
    rows = "demo.rows=[cot,coconut,cot_vote,coconut_noise_vote]"
    results = demo.run(out=tmp_path / "d", config=str(HARD), overrides=[*TINY, rows, "demo.num_trajectories=3",
                                                                          "demo.noise_grid=[0.0,0.3]"])
    assert list(results["methods"]) == ["cot", "coconut", "cot_vote", "coconut_noise_vote"]
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
    assert (tmp_path / "d" / "accuracy_vs_forward_passes.png").is_file()
    assert not (tmp_path / "d" / "no_cot").exists()  # a row not asked for is not trained
