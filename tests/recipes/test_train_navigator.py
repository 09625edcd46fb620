"""The navigator recipe (coconav/recipes/train_navigator.py): one PPO update has an effect, the first
ratio is exactly 1, bad settings are one-line errors, and the whole recipe runs end to end.

The COCONUT model is the session's tiny run (conftest.tiny_run), read-only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from coconav.config import NavigatorConfig, RunConfig, from_dict, to_dict
from coconav.eval.evaluate import evaluate
from coconav.io.checkpoint import TrainState, save_checkpoint
from coconav.recipes import train_navigator
from coconav.rl import update as rl_update
from coconav.rl.policy import reference_policy
from coconav.rl.rewards import step_rewards
from coconav.rl.rollout import roll_out

REPO = Path(__file__).resolve().parents[2]
DEMO_PRESET = REPO / "configs" / "demo.yaml"
PPO_KEYS = (
    "ppo/policy_loss",
    "ppo/value_loss",
    "ppo/entropy",
    "ppo/approx_kl",
    "ppo/clipfrac",
    "ppo/explained_variance",
)


def final_checkpoint(run: Path) -> Path:
    """The highest stage-N checkpoint of a COCONUT run."""
    stages = sorted((int(p.name.split("-")[1]), p) for p in (run / "checkpoints").glob("stage-*"))
    assert stages, f"no stage checkpoint under {run}"
    return stages[-1][1]


def nav_config(tiny_run: Path, out_dir: Path, **ppo) -> dict:
    """A tiny navigator run on the tiny COCONUT checkpoint (plain data: build it with from_dict or dump it)."""
    return nav_settings(final_checkpoint(tiny_run), out_dir, **ppo)


def nav_settings(init_from: Path, out_dir: Path, **ppo) -> dict:
    """A tiny navigator run on the COCONUT checkpoint `init_from`."""
    return {
        "out_dir": str(out_dir),
        "seed": 0,
        "threads": 1,
        "init_from": str(init_from),
        "data": {
            "task": "arithmetic",
            "train_size": 32,
            "validation_size": 4,
            "test_size": 4,
            "min_difficulty": 1,
            "max_difficulty": 6,
        },
        "eval": {"max_new_tokens": 6, "batch_size": 8},
        "log": {"progress": False},
        "navigator": {
            "hidden": 16,
            "action_dim": 4,
            "max_thoughts": 4,
            "memory_size": 16,
            "memory_topk": 2,
            "memory_min_return": -1.0,
            "init_log_std": 0.0,
        },  # every trajectory is remembered
        "ppo": {
            "updates": 2,
            "rollout_batch": 8,
            "num_minibatches": 2,
            "ppo_epochs": 2,
            "eval_every": 1,
            "target_kl": None,
            "lr": 1e-2,
            **ppo,
        },
    }


@pytest.fixture
def nav_run(tiny_run: Path, tmp_path: Path):
    cfg = from_dict(RunConfig, nav_config(tiny_run, tmp_path / "nav"))
    run, first = train_navigator.build(cfg, resume=None)
    assert first == 0
    yield run
    run.logger.close()


def rollout_with_mixed_rewards(run):
    """A sampled rollout of 8 training questions and hand-made rewards: correct for even rows, wrong for odd
    ones (so advantages differ in sign), thought cost .02 per thought (step_rewards' layout)."""
    gen = torch.Generator().manual_seed(0)
    traj = roll_out(run.lm, run.navigator, run.splits.train[:8], sample=True, max_new_tokens=6, generator=gen)
    correct = torch.tensor([1.0, 0.0] * 4)
    T = run.cfg.navigator.max_thoughts + 1
    rewards = step_rewards(correct, torch.zeros(8), traj.num_thoughts, T, thought_cost=0.02)
    return traj, rewards


def update_policy(run, traj, rewards, update: int = 0, correct=None) -> dict:
    """One PPO update (coconav.rl.update.ppo_update) of a run's policy, as the recipe makes it at `update`
    (temperature 1; minibatches seeded by the run's seed and the update)."""
    seed = run.cfg.seed * 100_003 + update
    return rl_update.ppo_update(
        run.policy, run.optimizer, run.accelerator, traj, rewards, run.cfg.ppo, 1.0, seed, correct=correct
    )


def test_build_freezes_the_lm_and_owns_the_navigator(nav_run):
    assert all(not p.requires_grad for p in nav_run.lm.parameters())
    opt_params = {id(p) for group in nav_run.optimizer.param_groups for p in group["params"]}
    assert opt_params == {id(p) for p in nav_run.navigator.parameters()}
    assert bool((nav_run.navigator.up.weight == 0).all())
    # the demo preset: max_stage 6, one thought per step, final_stage_steps 0 -> stage 6 with 6 thoughts
    assert nav_run.base_thoughts == 6


def spy_on_ppo_loss(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record (new, old) log-probs of every ppo_loss call a PPO update makes."""
    calls = []
    real_loss = rl_update.ppo_loss

    def spy(new, old, *args, **kwargs):
        calls.append((new.detach().clone(), old.clone()))
        return real_loss(new, old, *args, **kwargs)

    monkeypatch.setattr(rl_update, "ppo_loss", spy)
    return calls


def test_one_ppo_update_trains_the_navigator_only(nav_run, monkeypatch):
    run = nav_run
    traj, rewards = rollout_with_mixed_rewards(run)
    assert int(traj.num_thoughts.max()) > 0, "no thought was steered: U would get no gradient"
    nav_before = {n: p.detach().clone() for n, p in run.navigator.named_parameters()}
    lm_before = {n: p.detach().clone() for n, p in run.lm.named_parameters()}
    calls = spy_on_ppo_loss(monkeypatch)
    run.navigator.train()
    stats = update_policy(run, traj, rewards, update=0)
    # 2 epochs x 2 minibatches (target_kl off)
    assert len(calls) == 4 and stats["ppo/epochs"] == 2
    # the first minibatch of the first epoch replays exactly what the old log-probs were computed from
    new, old = calls[0]
    assert torch.equal(new, old)
    assert stats["ppo/ratio_first"] == 1.0
    # every navigator parameter group moved, U included (it starts at exactly zero)
    changed = {n for n, p in run.navigator.named_parameters() if not torch.equal(p, nav_before[n])}
    for name in ("up.weight", "mean_head.weight", "halt_head.weight", "value_head.weight", "log_std"):
        assert name in changed, name
    assert float(run.navigator.up.weight.detach().abs().sum()) > 0
    # the frozen LM is unchanged bit for bit
    for n, p in run.lm.named_parameters():
        assert torch.equal(p, lm_before[n]), n
    for key in PPO_KEYS:
        assert key in stats, key
    for key, value in stats.items():  # explained variance too: the returns vary, so it is defined
        assert math.isfinite(value), (key, value)
    # later minibatches see updated parameters: their ratio is no longer 1 everywhere
    assert any(not torch.equal(n, o) for n, o in calls[1:])


def test_ppo_update_is_deterministic(nav_run):
    """Two updates from the same navigator and optimizer state give bit-identical navigators (minibatches
    are seeded by (seed, update); nothing else is random)."""
    run = nav_run
    traj, rewards = rollout_with_mixed_rewards(run)
    state = {k: v.clone() for k, v in run.navigator.state_dict().items()}
    opt_state = run.optimizer.state_dict()
    run.navigator.train()
    update_policy(run, traj, rewards, update=3)
    first = {k: v.clone() for k, v in run.navigator.state_dict().items()}
    run.navigator.load_state_dict(state)
    run.optimizer.load_state_dict(opt_state)
    run.optimizer.state.clear()
    update_policy(run, traj, rewards, update=3)
    for k, v in run.navigator.state_dict().items():
        assert torch.equal(v, first[k]), k


# -- bad settings: one line naming the key --------------------------------------------------------------


BAD = {
    "epsilon": (["ppo.epsilon=-1"], "ppo.epsilon must be > 0 (the clip range, e.g. 0.2), got -1.0"),
    "max_thoughts": (["navigator.max_thoughts=0"], "navigator.max_thoughts must be >= 1, got 0"),
    "num_trajectories": (["ppo.num_trajectories=17"], "ppo.num_trajectories must be in [1, 16], got 17"),
    "group_needs_k": (
        ["ppo.advantage=group"],
        "ppo.advantage='group' compares the K trajectories of a question and needs ppo.num_trajectories "
        ">= 2, got 1: set ppo.num_trajectories=4 (for example) or ppo.advantage=gae",
    ),
    "scale_rewards": (["ppo.scale_rewards=std"], "ppo.scale_rewards: 'std' is not one of 'group' | 'batch' | 'none'"),
    "scorer_coef": (["ppo.scorer_coef=-1"], "ppo.scorer_coef must be >= 0, got -1.0"),
    "selector_coef": (["ppo.selector_coef=-0.5"], "ppo.selector_coef must be >= 0, got -0.5"),
    "min_above_max": (
        ["navigator.min_thoughts=5", "navigator.max_thoughts=2"],
        "navigator.min_thoughts must be in [0, max_thoughts=2], got 5",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_navigator_settings_are_one_line_errors(cli, tmp_path, case):
    overrides, message = BAD[case]
    res = cli(
        "train", "--config", DEMO_PRESET, f"out_dir={tmp_path / 'run'}", f"init_from={tmp_path / 'X'}", *overrides
    )
    assert res.error() == message
    assert not (tmp_path / "run").exists()


def test_navigator_section_needs_init_from(cli, tmp_path):
    res = cli("train", "--config", DEMO_PRESET, f"out_dir={tmp_path / 'run'}", "navigator.max_thoughts=3")
    assert res.error() == "a navigator run needs init_from: the COCONUT checkpoint it steers"


def test_navigator_section_without_init_from_in_a_file(cli, tmp_path):
    cfg = tmp_path / "nav.yaml"
    cfg.write_text("out_dir: x\nnavigator:\n  max_thoughts: 3\n", encoding="utf-8")
    # the file's own error names the file (no line: init_from is the key that is missing)
    assert (
        cli("train", "--config", cfg).error()
        == f"{cfg}: a navigator run needs init_from: the COCONUT checkpoint it steers"
    )


def test_init_from_that_is_not_a_checkpoint(cli, tmp_path):
    missing = tmp_path / "nowhere"
    res = cli(
        "train",
        "--config",
        DEMO_PRESET,
        f"out_dir={tmp_path / 'run'}",
        f"init_from={missing}",
        "navigator.max_thoughts=3",
    )
    assert res.error().startswith(f"init_from: checkpoint folder not found: {missing}")
    assert not (tmp_path / "run").exists()  # refused before the run folder is written


# -- the whole recipe ---------------------------------------------------------------------------------


def write_config(tiny_run: Path, tmp_path: Path, **ppo) -> tuple[Path, Path]:
    out = tmp_path / "nav"
    cfg = tmp_path / "nav.yaml"
    cfg.write_text(yaml.safe_dump(nav_config(tiny_run, out, **ppo)), encoding="utf-8")
    return cfg, out


def test_recipe_end_to_end(cli, tiny_run, tmp_path):
    cfg, out = write_config(tiny_run, tmp_path, ppo_epochs=1)
    res = cli("train", "--config", cfg)
    assert res.rc == 0, res.err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for key in ("navigator", "navigator_no_steering", "navigator_no_memory", "coconut_fixed", "curve"):
        assert key in results, key
    assert [row["update"] for row in results["curve"]] == [1, 2]
    for key in ("navigator", "navigator_no_steering", "navigator_no_memory", "coconut_fixed"):
        assert results[key]["num_questions"] == 4 and 0.0 <= results[key]["accuracy"] <= 1.0
    for key in ("navigator", "navigator_no_steering", "navigator_no_memory"):
        assert results[key]["mean_thoughts"] <= 4  # the navigator's budget
    assert results["coconut_fixed"]["mean_thoughts"] == 6  # the base run's last stage: 6 thoughts for all
    assert "spearman_steps_thoughts" in results["navigator"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    ppo_records = [r for r in records if "ppo/policy_loss" in r]
    assert [r["step"] for r in ppo_records] == [1, 2]
    for r in ppo_records:
        for key in PPO_KEYS:
            assert key in r, key
        assert r["ppo/ratio_first"] == 1.0
        assert "rollout/accuracy" in r and "memory/entries" in r
    assert any("eval/accuracy" in r for r in records)
    # the navigator (its bank included) is saved with the checkpoint and loads back for inference
    from coconav.inference import CoconavModel

    model = CoconavModel.from_pretrained(out / "checkpoints" / "last")
    assert model.navigator is not None
    last = ppo_records[-1]
    assert float(model.navigator.up.weight.detach().norm()) == pytest.approx(last["navigator/steer_norm"], rel=1e-6)
    assert model.navigator.bank.filled == last["memory/entries"] == 16  # 2 updates x 8 trajectories
    assert [r["memory/entries"] for r in ppo_records] == [8, 16]
    assert float(model.navigator.up.weight.detach().norm()) > 0  # trained away from plain COCONUT
    # `coconav eval` on the navigator checkpoint reproduces the recipe's evaluations, ablations included
    for flags, key in (
        ((), "navigator"),
        (("--no-steering",), "navigator_no_steering"),
        (("--no-memory",), "navigator_no_memory"),
    ):
        report_path = tmp_path / f"eval{len(flags)}{key}.json"
        res = cli("eval", "--checkpoint", out, "--data", "test", "--max-questions", 4, *flags, "--out", report_path)
        assert res.rc == 0, res.err
        report = json.loads(report_path.read_text(encoding="utf-8"))
        assert report["navigator"] is True and report["steering"] == (key != "navigator_no_steering")
        assert report["memory"] == (key != "navigator_no_memory")
        assert report["accuracy"] == results[key]["accuracy"], key
        assert report["mean_thoughts"] == pytest.approx(results[key]["mean_thoughts"]), key


def test_train_lm_updates_lora_adapters_with_a_kl_penalty(tiny_run, tmp_path):
    """ppo.train_lm: the LM's LoRA adapters train with the policy gradient; the frozen base does not;
    the KL to the reference (adapters off) is logged."""
    data = nav_config(tiny_run, tmp_path / "nav_lm", train_lm=True, beta=0.1, lm_lr=1e-2)
    data["model"] = {"lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}}
    run, _ = train_navigator.build(from_dict(RunConfig, data), resume=None)
    lora = {n: p.detach().clone() for n, p in run.lm.named_parameters() if p.requires_grad}
    base = {n: p.detach().clone() for n, p in run.lm.named_parameters() if not p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    traj, rewards = rollout_with_mixed_rewards(run)
    run.navigator.train()
    stats = update_policy(run, traj, rewards, update=0)
    assert "ppo/kl_ref" in stats and math.isfinite(stats["ppo/kl_ref"]) and stats["ppo/kl_ref"] >= 0
    assert any(not torch.equal(p, lora[n]) for n, p in run.lm.named_parameters() if n in lora)
    assert all(torch.equal(p, base[n]) for n, p in run.lm.named_parameters() if n in base)
    run.logger.close()


# -- the LM under ppo.train_lm: its adapters, the KL reference, resume, dropout, dtype ----------------


def lm_logits(lm, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lm(ids, torch.ones_like(ids), return_logits=True).logits


def probe_ids(lm) -> torch.Tensor:
    s = lm.special
    return torch.tensor([[3, 13, 4, 16, s.bot, s.thought, s.thought, s.eot, 17, 5, 1]])


def test_train_lm_on_a_lora_checkpoint_keeps_training_its_adapter(lora_coconut, tmp_path):
    """ppo.train_lm on a LoRA COCONUT checkpoint trains that adapter (it used to be wrapped a second time under
    the name 'default', which reset lora_B); the KL reference is the COCONUT policy as loaded, not the bare base."""
    from coconav.inference import CoconavModel

    coconut = CoconavModel.from_pretrained(lora_coconut, device="cpu")
    ids = probe_ids(coconut.lm)
    loaded = lm_logits(coconut.lm, ids)
    saved_b = {n: p.detach().clone() for n, p in coconut.lm.named_parameters() if "lora_B" in n}
    assert saved_b and all(float(p.abs().sum()) > 0 for p in saved_b.values())
    run, _ = train_navigator.build(
        from_dict(RunConfig, nav_settings(lora_coconut, tmp_path / "nav", train_lm=True, beta=0.1, lm_lr=1e-1)),
        resume=None,
    )
    b_now = {n: p for n, p in run.lm.named_parameters() if "lora_B.default" in n}
    assert b_now.keys() == saved_b.keys() and all(torch.equal(b_now[n], saved_b[n]) for n in saved_b)
    trainable = {n: p.detach().clone() for n, p in run.lm.named_parameters() if p.requires_grad}
    assert trainable and all(".default" in n for n in trainable), sorted(trainable)
    torch.testing.assert_close(lm_logits(run.lm, ids), loaded, atol=0, rtol=0)  # the policy starts as COCONUT
    with reference_policy(run.lm, run.reference_adapter):
        torch.testing.assert_close(lm_logits(run.lm, ids), loaded, atol=0, rtol=0)
    traj, rewards = rollout_with_mixed_rewards(run)
    run.navigator.train()
    stats = update_policy(run, traj, rewards, update=0)
    assert stats["ppo/ratio_first"] == 1.0 and math.isfinite(stats["ppo/kl_ref"])
    assert any(not torch.equal(p, trainable[n]) for n, p in run.lm.named_parameters() if n in trainable)
    assert {n for n, p in run.lm.named_parameters() if p.requires_grad} == trainable.keys()  # flags restored
    assert not torch.equal(lm_logits(run.lm, ids), loaded)  # the policy moved ...
    with reference_policy(run.lm, run.reference_adapter):  # ... the reference did not
        torch.testing.assert_close(lm_logits(run.lm, ids), loaded, atol=0, rtol=0)
    # the navigator checkpoint holds the trained adapter only (not the reference) and reloads to the policy
    save_checkpoint(
        tmp_path / "nav_ckpt",
        run.lm,
        TrainState(0, 1, 1),
        to_dict(run.cfg),
        modules={"navigator": run.navigator},
        metrics={"base_thoughts": run.base_thoughts},
    )
    assert not (tmp_path / "nav_ckpt" / "reference").exists()
    again = CoconavModel.from_pretrained(tmp_path / "nav_ckpt", device="cpu")
    torch.testing.assert_close(lm_logits(again.lm, ids), lm_logits(run.lm, ids), atol=0, rtol=0)
    run.logger.close()


@pytest.mark.parametrize("base", ["full", "lora"])
def test_resume_with_train_lm_reloads_the_trained_adapters(cli, request, tmp_path, base):
    """--resume used to rebuild fresh adapters (lora_B = 0) while restoring the optimizer's moments. 'full': a
    full COCONUT model with fresh adapters; 'lora': a LoRA COCONUT checkpoint whose own adapter trains."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    if base == "full":
        data = nav_config(request.getfixturevalue("tiny_run"), tmp_path / "nav", train_lm=True, lm_lr=1e-2, updates=1)
        data["model"] = {"lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}}
    else:
        data = nav_settings(
            request.getfixturevalue("lora_coconut"), tmp_path / "nav", train_lm=True, lm_lr=1e-2, updates=1
        )
    cfg_path = tmp_path / "nav.yaml"
    cfg_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert cli("train", "--config", cfg_path).rc == 0
    last = tmp_path / "nav" / "checkpoints" / "last"
    saved = load_file(str(last / "adapter_model.safetensors"))
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in saved.items())
    data["ppo"]["updates"] = 2
    run, first = train_navigator.build(from_dict(RunConfig, data), resume=str(tmp_path / "nav"))
    assert first == 1
    loaded = get_peft_model_state_dict(run.lm.model, adapter_name="default", save_embedding_layers=False)
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    assert all(p.requires_grad for n, p in run.lm.named_parameters() if "lora_" in n and ".default" in n)
    run.logger.close()


def test_rollouts_and_replays_run_without_dropout(tmp_path, monkeypatch):
    """GPT-2 keeps dropout 0.1: with train_lm the LM used to stay in train mode after the first validation,
    so two no-grad replays of one minibatch differed and the first PPO ratios were not 1."""
    from coconav.rl.rollout import replay

    from conftest import coconut_checkpoint, save_pretrained_base

    base = save_pretrained_base(tmp_path / "gpt2", arch="gpt2")
    ckpt = coconut_checkpoint(tmp_path / "coconut", {"name_or_path": str(base)}, train_steps=0)
    data = nav_settings(ckpt, tmp_path / "nav", train_lm=True, beta=0.1, lm_lr=1e-2)
    data["model"] = {"lora": {"r": 2, "alpha": 4, "target_modules": ["c_attn"]}}
    run, _ = train_navigator.build(from_dict(RunConfig, data), resume=None)
    train_navigator.validate(run, 1)  # the old code left the LM in train mode from here on
    traj, rewards = rollout_with_mixed_rewards(run)
    idx = torch.arange(len(traj))
    with torch.no_grad():
        first, second = replay(run.lm, run.navigator, traj, idx), replay(run.lm, run.navigator, traj, idx)
    assert torch.equal(first.logprobs, second.logprobs) and torch.equal(first.answer_logprobs, second.answer_logprobs)
    calls = spy_on_ppo_loss(monkeypatch)
    run.navigator.train()
    stats = update_policy(run, traj, rewards, update=0)
    assert torch.equal(*calls[0]) and stats["ppo/ratio_first"] == 1.0
    assert not run.lm.training
    run.logger.close()


def test_navigator_keeps_the_checkpoint_dtype(bf16_coconut, tmp_path):
    """model.dtype unset: the COCONUT checkpoint's bf16 weights stay bf16 (the old load gave fp32), and a
    PPO update runs on them."""
    run, _ = train_navigator.build(from_dict(RunConfig, nav_settings(bf16_coconut, tmp_path / "nav")), resume=None)
    assert run.lm.causal_lm.dtype == torch.bfloat16
    traj, rewards = rollout_with_mixed_rewards(run)
    run.navigator.train()
    stats = update_policy(run, traj, rewards, update=0)
    assert math.isfinite(stats["ppo/policy_loss"])
    run.logger.close()


# -- several trajectories per question: group advantages, annealing, scorer and K-selector ---------------


def multi_run(tiny_run: Path, out: Path, **ppo):
    cfg = from_dict(RunConfig, nav_config(tiny_run, out, **ppo))
    run, _ = train_navigator.build(cfg, resume=None)
    return run


def spy_on_ppo_loss_inputs(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Record the advantages, value targets and mask of every ppo_loss call a PPO update makes."""
    calls = []
    real_loss = rl_update.ppo_loss

    def spy(new, old, advantages, new_values, old_values, returns, entropy, mask, *args, **kwargs):
        calls.append(
            {"advantages": advantages.detach().clone(), "returns": returns.detach().clone(), "mask": mask.clone()}
        )
        return real_loss(new, old, advantages, new_values, old_values, returns, entropy, mask, *args, **kwargs)

    monkeypatch.setattr(rl_update, "ppo_loss", spy)
    return calls


@pytest.mark.parametrize("scale", ["none", "group"])
def test_group_advantages_through_the_recipe_equal_hand_derived_numbers(tiny_run, tmp_path, monkeypatch, scale):
    run = multi_run(
        tiny_run,
        tmp_path / "nav",
        num_trajectories=2,
        advantage="group",
        scale_rewards=scale,
        num_minibatches=1,
        ppo_epochs=1,
    )
    gen = torch.Generator().manual_seed(0)
    traj = roll_out(
        run.lm, run.navigator, run.splits.train[:4], num_trajectories=2, sample=True, max_new_tokens=6, generator=gen
    )
    assert traj.group.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    T = run.cfg.navigator.max_thoughts + 1
    # hand-made returns, paid at each trajectory's last step: groups [1, 0], [1, 1], [0, 0], [.5, -.5]
    returns = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, -0.5])
    rewards = torch.zeros(8, T)
    rewards[torch.arange(8), traj.num_thoughts] = returns
    # group means .5, 1, 0, 0; population stds .5, 0, 0, .5 -> centred [.5, -.5, 0, 0, 0, 0, .5, -.5]
    centred = torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.5, -0.5])
    expected = centred / (0.5 + 1e-4) if scale == "group" else centred  # groups that agree stay 0 (eps 1e-4)
    calls = spy_on_ppo_loss_inputs(monkeypatch)
    run.navigator.train()
    update_policy(run, traj, rewards, update=0)
    assert len(calls) == 1
    mb = torch.randperm(8, generator=torch.Generator().manual_seed(run.cfg.seed * 100_003))  # the recipe's minibatch
    valid = calls[0]["mask"].float()
    assert torch.equal(valid.sum(1), (traj.num_thoughts[mb] + 1).float())
    # every real step of a trajectory gets its group-relative advantage, unnormalised (norm_adv is for GAE)
    torch.testing.assert_close(calls[0]["advantages"], expected[mb][:, None] * valid, atol=1e-6, rtol=0)
    # the value head's targets are the reward-to-go: the trajectory's return at every real step here
    torch.testing.assert_close(calls[0]["returns"], returns[mb][:, None] * valid)
    run.logger.close()


def test_gae_is_still_the_default_advantage(tiny_run, tmp_path, monkeypatch):
    run = multi_run(tiny_run, tmp_path / "nav", num_trajectories=2, num_minibatches=1, ppo_epochs=1, norm_adv=False)
    assert run.cfg.ppo.advantage == "gae"
    gen = torch.Generator().manual_seed(0)
    traj = roll_out(
        run.lm, run.navigator, run.splits.train[:4], num_trajectories=2, sample=True, max_new_tokens=6, generator=gen
    )
    rewards = torch.zeros(8, run.cfg.navigator.max_thoughts + 1)
    rewards[torch.arange(8), traj.num_thoughts] = 1.0  # every trajectory right: group advantages would be all 0
    calls = spy_on_ppo_loss_inputs(monkeypatch)
    run.navigator.train()
    update_policy(run, traj, rewards, update=0)
    assert bool((calls[0]["advantages"].abs() > 0).any())  # return 1 minus the (untrained) value estimates
    run.logger.close()


def test_temperature_schedule_defaults_to_the_old_linear_one_bit_for_bit():
    def old(cfg, update):  # the recipe's schedule before navigator.temperature_schedule existed
        nav = cfg.navigator
        frac = update / max(1, cfg.ppo.updates - 1)
        return nav.temperature + (nav.temperature_final - nav.temperature) * min(1.0, frac)

    demo = from_dict(RunConfig, yaml.safe_load((REPO / "configs" / "demo_navigator.yaml").read_text()))
    assert demo.navigator.temperature_schedule == "linear" and demo.navigator.temperature_final == 0.3
    for cfg in (
        demo,
        from_dict(
            RunConfig,
            {"init_from": "x", "navigator": {"temperature": 2.0, "temperature_final": 0.1}, "ppo": {"updates": 7}},
        ),
    ):
        for update in range(cfg.ppo.updates + 2):
            assert train_navigator.temperature_at(cfg, update) == old(cfg, update), update
    cosine = from_dict(
        RunConfig,
        {
            "init_from": "x",
            "ppo": {"updates": 5},
            "navigator": {"temperature": 1.0, "temperature_final": 0.2, "temperature_schedule": "cosine"},
        },
    )
    temps = [train_navigator.temperature_at(cosine, u) for u in range(5)]
    assert temps[0] == 1.0 and temps[-1] == pytest.approx(0.2) and temps[1] > old(cosine, 1)  # slow start


def head_names(run) -> set[str]:
    return {n for n, _ in run.navigator.named_parameters() if n.startswith(("scorer_head.", "selector."))}


def test_scorer_and_selector_train_without_changing_the_policy(nav_run):
    """The demo's setting (K = 1): one seeded update with the scorer and selector losses on gives bit-identical
    policy and value parameters to one with them off; only their heads differ."""
    run = nav_run
    assert run.cfg.ppo.scorer_coef > 0 and run.cfg.ppo.selector_coef > 0  # on by default
    traj, rewards = rollout_with_mixed_rewards(run)
    correct = torch.tensor([1.0, 0.0] * 4)
    state = {k: v.clone() for k, v in run.navigator.state_dict().items()}
    opt_state = run.optimizer.state_dict()
    run.navigator.train()
    on = update_policy(run, traj, rewards, update=0, correct=correct)
    with_heads = {n: p.detach().clone() for n, p in run.navigator.named_parameters()}
    run.navigator.load_state_dict(state)
    run.optimizer.load_state_dict(opt_state)
    run.optimizer.state.clear()
    run.cfg.ppo.scorer_coef = run.cfg.ppo.selector_coef = 0.0
    off = update_policy(run, traj, rewards, update=0, correct=correct)
    heads = head_names(run)
    for n, p in run.navigator.named_parameters():
        if n in heads:
            assert torch.equal(p, state[n]), n  # off: untouched
        else:
            assert torch.equal(p, with_heads[n]), n  # the policy, value head and trunk: bit-identical
    assert any(not torch.equal(with_heads[n], state[n]) for n in heads)
    for key in ("ppo/policy_loss", "ppo/value_loss", "ppo/approx_kl", "ppo/clipfrac"):
        assert on[key] == off[key], key
    assert "ppo/scorer_loss" in on and "ppo/selector_loss" in on


def test_scorer_and_selector_losses_decrease_over_updates(tiny_run, tmp_path):
    run = multi_run(tiny_run, tmp_path / "nav", num_trajectories=2, advantage="group", lr=3e-2)
    gen = torch.Generator().manual_seed(0)
    traj = roll_out(
        run.lm, run.navigator, run.splits.train[:4], num_trajectories=2, sample=True, max_new_tokens=6, generator=gen
    )
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    rewards = torch.zeros(8, run.cfg.navigator.max_thoughts + 1)
    rewards[torch.arange(8), traj.num_thoughts] = correct
    run.navigator.train()
    history = [update_policy(run, traj, rewards, update=u, correct=correct) for u in range(6)]
    scorer = [h["ppo/scorer_loss"] for h in history]
    selector = [h["ppo/selector_loss"] for h in history]
    assert scorer[-1] < scorer[0] - 0.02 and selector[-1] < selector[0] - 0.02, (scorer, selector)
    run.logger.close()


def test_multi_trajectory_recipe_end_to_end(cli, tiny_run, tmp_path):
    cfg, out = write_config(tiny_run, tmp_path, ppo_epochs=1, num_trajectories=2, advantage="group", fusion="value")
    res = cli("train", "--config", cfg)
    assert res.rc == 0, res.err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    ppo_records = [r for r in records if "ppo/policy_loss" in r]
    assert len(ppo_records) == 2
    for r in ppo_records:
        assert r["rollout/k_mean"] == 2 and r["rollout/k_share/2"] == 1.0
        # per question: the prefill the 2 trajectories share once, then each one's thoughts and tokens
        # (not 1 + thoughts + tokens per trajectory: that pays the shared prefill twice and halves the work)
        assert r["rollout/forward_passes"] == pytest.approx(
            1 + 2 * (r["rollout/mean_thoughts"] + r["rollout/mean_new_tokens"])
        )
        assert 0.5 <= r["rollout/agreement"] <= 1.0
        assert r["rollout/single_accuracy"] <= r["rollout/best_single_accuracy"]
        assert r["rollout/fused_accuracy"] <= r["rollout/best_single_accuracy"]
        for key in ("ppo/scorer_loss", "ppo/selector_loss", "ppo/approx_kl", "ppo/clipfrac"):
            assert math.isfinite(r[key]), key
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    multi = results["navigator_multi"]
    assert multi["num_trajectories"] == 2 and multi["fusion"] == "value" and multi["mean_trajectories"] == 2
    assert multi["num_questions"] == results["navigator"]["num_questions"] == 4
    assert "mean_forward_passes" in multi and "accuracy_coverage" in multi
    assert results["navigator"]["mean_thoughts"] <= 4  # the K = 1 row beside it
    # the same K trajectories with steering off, beside it (steering as the sampler of diverse trajectories)
    plain = results["navigator_multi_no_steering"]
    assert plain["num_trajectories"] == 2 and plain["num_questions"] == 4
    assert plain["mean_agreement"] >= 0.5 and "navigator_multi_no_steering" in results


def test_a_halting_only_multi_run_has_no_steering_ablation(cli, tiny_run, tmp_path):
    cfg, out = write_config(tiny_run, tmp_path, ppo_epochs=1, updates=1, num_trajectories=2, advantage="group")
    data = yaml.safe_load(cfg.read_text())
    data["navigator"]["steering"] = False
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert cli("train", "--config", cfg).rc == 0
    results = json.loads((out / "results.json").read_text())
    assert "navigator_multi" in results and "navigator_multi_no_steering" not in results


def test_single_trajectory_run_logs_group_diagnostics_and_no_multi_row(cli, tiny_run, tmp_path):
    cfg, out = write_config(tiny_run, tmp_path, ppo_epochs=1, updates=1)
    assert cli("train", "--config", cfg).rc == 0
    (r,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "ppo/policy_loss" in line]
    assert r["rollout/k_mean"] == 1 and r["rollout/agreement"] == 1.0
    assert (
        r["rollout/fused_accuracy"]
        == r["rollout/single_accuracy"]
        == r["rollout/best_single_accuracy"]
        == r["rollout/accuracy"]
    )
    assert "navigator_multi" not in json.loads((out / "results.json").read_text())


def test_eval_trajectories_sets_the_k_of_the_multi_row(cli, tiny_run, tmp_path):
    cfg, out = write_config(
        tiny_run, tmp_path, ppo_epochs=1, updates=1, num_trajectories=2, advantage="group", eval_trajectories=3
    )
    assert cli("train", "--config", cfg).rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["navigator_multi"]["num_trajectories"] == 3 and results["navigator_multi"]["mean_trajectories"] == 3


def spy_on_threshold_choices(monkeypatch) -> list[dict]:
    """Record the questions and K of every choose_halt_threshold call the recipe makes."""
    calls = []
    real = train_navigator.choose_halt_threshold

    def spy(lm, navigator, examples, *args, **kwargs):
        calls.append(
            {
                "questions": [ex.question for ex in examples],
                "k": kwargs.get("num_trajectories", 1),
                "refine": kwargs.get("refine", 0),
            }
        )
        return real(lm, navigator, examples, *args, **kwargs)

    monkeypatch.setattr(train_navigator, "choose_halt_threshold", spy)
    return calls


def test_pass_budget_chooses_the_halting_threshold_on_validation_and_saves_it(cli, tiny_run, tmp_path, monkeypatch):
    data = nav_config(tiny_run, tmp_path / "nav", ppo_epochs=1, updates=1)
    data["navigator"].update(pass_budget=9.0, halt_threshold_grid=[0.05, 0.5, 0.95])
    cfg, out = tmp_path / "nav.yaml", tmp_path / "nav"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    calls = spy_on_threshold_choices(monkeypatch)
    res = cli("train", "--config", cfg)
    assert res.rc == 0, res.err
    # the threshold is chosen on the validation questions, never on the test questions it is then reported on
    from coconav.data.splits import load_splits

    splits = load_splits(from_dict(RunConfig, data).data, seed=0)
    validation, test = [ex.question for ex in splits.validation], [ex.question for ex in splits.test]
    assert validation != test
    assert [c["questions"] for c in calls] == [validation] and calls[0]["k"] == 1
    assert calls[0]["refine"] == NavigatorConfig().halt_threshold_refine > 0  # the grid, then the bisection
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    budget = results["pass_budget"]
    tried = [t["threshold"] for t in budget["tried"]]
    assert budget["budget"] == 9.0 and {0.05, 0.5, 0.95} <= set(tried) and tried == sorted(tried)
    fitting = [t for t in budget["tried"] if t["mean_forward_passes"] <= 9.0]
    assert budget["fits"] == bool(fitting)
    if fitting:
        assert budget["threshold"] in [t["threshold"] for t in fitting]
    # the chosen threshold is in the checkpoint's config: inference and `coconav eval` halt with it
    from coconav.inference import CoconavModel

    model = CoconavModel.from_pretrained(out / "checkpoints" / "last")
    assert model.navigator.cfg.halt_threshold == budget["threshold"]
    report = tmp_path / "eval.json"
    assert cli("eval", "--checkpoint", out, "--data", "test", "--max-questions", 4, "--out", report).rc == 0
    assert json.loads(report.read_text())["mean_forward_passes"] == pytest.approx(
        results["navigator"]["mean_forward_passes"]
    )


def test_pass_budget_needs_a_validation_split(tiny_run, tmp_path):
    from coconav.errors import ConfigError

    data = nav_config(tiny_run, tmp_path / "nav", updates=1)
    data["navigator"]["pass_budget"] = 9.0
    data["data"]["validation_size"] = 0
    with pytest.raises(
        ConfigError, match="navigator.pass_budget chooses the halting threshold on the validation split"
    ):
        train_navigator.build(from_dict(RunConfig, data), resume=None)
    assert not (tmp_path / "nav").exists()  # refused before the run folder is made


def test_multi_pass_budget_needs_a_multi_row(tiny_run, tmp_path):
    from coconav.errors import ConfigError

    data = nav_config(tiny_run, tmp_path / "nav", updates=1)  # K = 1: no navigator_multi row
    data["navigator"]["multi_pass_budget"] = 40.0
    with pytest.raises(
        ConfigError, match="navigator.multi_pass_budget chooses the threshold of the multi-trajectory row"
    ):
        train_navigator.build(from_dict(RunConfig, data), resume=None)


def test_k1_rows_and_the_multi_row_get_thresholds_chosen_at_their_own_k(cli, tiny_run, tmp_path, monkeypatch):
    """navigator.pass_budget is chosen at K = 1 for the K = 1 rows, multi_pass_budget at K = 3 for navigator_multi;
    both land in results.json and the checkpoint's config, and `coconav eval` halts with the one of its K."""
    from coconav.eval.evaluate import ThresholdChoice
    from coconav.inference import CoconavModel

    data = nav_config(
        tiny_run,
        tmp_path / "nav",
        ppo_epochs=1,
        updates=1,
        num_trajectories=2,
        advantage="group",
        eval_trajectories=3,
        fusion="value",
    )
    data["navigator"].update(pass_budget=9.0, multi_pass_budget=30.0, halt_threshold_grid=[0.05, 0.95])
    cfg, out = tmp_path / "nav.yaml", tmp_path / "nav"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    # a stand-in choice, so that the two thresholds surely differ: 0.95 at K = 1 (an untrained navigator, p ~ .12,
    # never halts: every thought) and 0.05 at K = 3 (it halts at once: no thought)
    picks, calls = {1: 0.95, 3: 0.05}, []

    def choose(
        lm, navigator, examples, eval_cfg, budget, grid, seed=0, num_trajectories=1, fusion="majority", refine=0
    ):
        calls.append((len(examples), num_trajectories, budget, fusion))
        t = picks[num_trajectories]
        return ThresholdChoice(
            threshold=t,
            budget=budget,
            fits=True,
            tried=[{"threshold": t, "accuracy": 0.5, "mean_forward_passes": 5.0, "mean_thoughts": 1.0}],
        )

    monkeypatch.setattr(train_navigator, "choose_halt_threshold", choose)
    used = {}
    for name in ("evaluate_navigator", "evaluate_multi"):
        real = getattr(train_navigator, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            settings = args[4] if len(args) > 4 else kwargs.get("settings")
            used.setdefault(_name, []).append(settings and settings.halt_threshold)
            return _real(*args, **kwargs)

        monkeypatch.setattr(train_navigator, name, spy)
    res = cli("train", "--config", cfg)
    assert res.rc == 0, res.err
    assert calls == [(4, 1, 9.0, "value"), (4, 3, 30.0, "value")]  # both on the 4 validation questions
    # the K = 1 rows (navigator, no steering, no memory) halt at the K = 1 choice, the multi row at the K = 3 one
    # (the periodic validation before them uses the configured default: None)
    # the multi row and its steering-off ablation halt at the K = 3 threshold
    assert used["evaluate_navigator"][-3:] == [0.95] * 3 and used["evaluate_multi"] == [0.05, 0.05]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["pass_budget"]["threshold"] == 0.95 and results["pass_budget"]["num_trajectories"] == 1
    assert results["multi_pass_budget"]["threshold"] == 0.05 and results["multi_pass_budget"]["num_trajectories"] == 3
    assert results["navigator"]["mean_thoughts"] == 4 and results["navigator_multi"]["mean_thoughts"] == 0
    model = CoconavModel.from_pretrained(out / "checkpoints" / "last")
    assert (model.navigator.cfg.halt_threshold, model.navigator.cfg.multi_halt_threshold) == (0.95, 0.05)
    # `coconav eval`: K = 3 halts with multi_halt_threshold, K = 1 with halt_threshold, as the rows did
    for k, row in ((3, "navigator_multi"), (1, "navigator")):
        report = tmp_path / f"eval{k}.json"
        assert (
            cli(
                "eval",
                "--checkpoint",
                out,
                "--data",
                "test",
                "--num-trajectories",
                k,
                "--fusion",
                "value",
                "--out",
                report,
            ).rc
            == 0
        )
        got = json.loads(report.read_text())
        assert got["halt_threshold"] == picks[k]
        assert got["mean_forward_passes"] == pytest.approx(results[row]["mean_forward_passes"])
    # an explicit --halt-threshold replaces both
    assert model.halt_threshold_for(3) == 0.05 and model.halt_threshold_for(1) == model.navigator.cfg.halt_threshold
    assert (
        CoconavModel(model.lm, model.config, model.stage, model.navigator, halt_threshold=0.3).halt_threshold_for(3)
        == 0.3
    )


def test_no_memory_switches_every_memory_off_the_group_read_included(nav_run, monkeypatch):
    """evaluate_navigator with settings.memory=False, the navigator_no_memory row: episodic, persistent and group read all off
    while it runs, and back on afterwards."""
    from coconav.decode.settings import resolve_settings
    from coconav.eval.evaluate import evaluate_navigator
    from coconav.model.navigator import Navigator

    seen = set()
    real = Navigator.features

    def spy(self, *args, **kwargs):
        seen.add((self.use_episodic, self.use_persistent, self.use_group))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Navigator, "features", spy)
    assert nav_run.navigator.group is not None  # the group read exists (navigator.group_memory defaults to on)
    off = resolve_settings(nav_run.navigator.cfg, memory=False)
    evaluate_navigator(nav_run.lm, nav_run.navigator, nav_run.splits.test, nav_run.cfg.eval, settings=off)
    assert seen == {(False, False, False)}
    assert (nav_run.navigator.use_episodic, nav_run.navigator.use_persistent, nav_run.navigator.use_group) == (
        True,
    ) * 3
    # the recipe's navigator_no_memory row is that call
    seen.clear()
    calls = []
    real_eval = train_navigator.evaluate_navigator

    def row_spy(*args, **kwargs):
        calls.append(args[4].memory)
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_navigator, "evaluate_navigator", row_spy)
    results = train_navigator.final_evaluation(nav_run, [])
    assert calls == [True, True, False] and "navigator_no_memory" in results
    assert (False, False, False) in seen


def test_cold_start_data_matches_fixed_count_evaluation_and_plain_thoughts(tiny_run, tmp_path):
    """The cold start's outcomes are the fixed-k evaluations' (column k = k thoughts), and its states are the plain
    COCONUT thoughts h_0..h_L that an untrained navigator (U = 0) sees."""
    cfg = from_dict(RunConfig, nav_config(tiny_run, tmp_path / "nav", cold_start_questions=6))
    run, _ = train_navigator.build(cfg, resume=None)
    states, correct, passes = train_navigator.cold_start_data(run)
    L = cfg.navigator.max_thoughts
    assert states.shape == (6, L + 1, run.lm.hidden_size) and correct.shape == passes.shape == (6, L + 1)
    examples = random.Random(cfg.seed * 1_000_003 + 17).sample(run.splits.train, 6)
    eval_cfg = dataclasses.replace(cfg.eval, max_questions=0)
    for k in (0, L):
        res = evaluate(run.lm, examples, "coconut", k, eval_cfg, seed=cfg.seed)
        assert correct[:, k].tolist() == [q.correct for q in res.questions]
        assert passes[:, k].tolist() == [q.forward_passes for q in res.questions]
    # the same states as a greedy navigator rollout that never halts early (steering is zero at the start)
    traj = roll_out(run.lm, run.navigator, examples, sample=False, max_new_tokens=2)
    full = traj.num_thoughts == L
    assert bool(full.any())
    torch.testing.assert_close(traj.states[full].float(), states[full].to(traj.states.device), atol=1e-5, rtol=1e-5)
    run.logger.close()


def test_cold_start_teaches_the_halting_head_its_targets_before_ppo(tiny_run, tmp_path, monkeypatch):
    """With ppo.cold_start_questions the halting head is trained (its loss falls) before the first PPO update, and the
    statistics reach the metrics log; a resumed run does not repeat it."""
    cfg = from_dict(
        RunConfig, nav_config(tiny_run, tmp_path / "nav", cold_start_questions=16, cold_start_epochs=30, updates=1)
    )
    order = []
    real_cold, real_update = train_navigator.cold_start, train_navigator.ppo_update

    def cold(run):
        halt_before = run.navigator.halt_head.weight.detach().clone()
        stats = real_cold(run)
        assert not torch.equal(run.navigator.halt_head.weight, halt_before)
        order.append(("cold", stats))
        return stats

    def update(*args, **kwargs):
        order.append(("ppo", None))
        return real_update(*args, **kwargs)

    monkeypatch.setattr(train_navigator, "cold_start", cold)
    monkeypatch.setattr(train_navigator, "ppo_update", update)
    train_navigator.train(cfg)
    assert [name for name, _ in order] == ["cold", "ppo"]
    stats = order[0][1]
    assert stats["cold_start/loss_after"] < stats["cold_start/loss_before"]
    assert 0.0 <= stats["cold_start/hit_rate"] <= 1.0
    logged = [json.loads(line) for line in (tmp_path / "nav" / "metrics.jsonl").read_text().splitlines()]
    assert any("cold_start/loss_after" in line for line in logged)
