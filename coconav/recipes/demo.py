"""The demo: no-CoT, CoT, COCONUT and the navigator, trained from scratch on a built-in task and compared.

    coconav demo --out runs/demo                  # the embedded preset (coconav/recipes/demo.yaml)
    coconav demo --out runs/demo --seed 1
    coconav demo --out runs/demo_full --config configs/demo_full.yaml

Steps: (1) train a no-CoT model; (2) train the COCONUT run, whose stage 0 is CoT training (as in the
paper, COCONUT starts from the CoT model) and whose stages 1..K replace steps with thoughts; (3)
train the navigator with PPO on the COCONUT model (coconav/recipes/demo_navigator.yaml); (4)
evaluate all on the same held-out test set — CoT from the stage-0 checkpoint, COCONUT from the last
stage with its fixed thought count for every question, the navigator halting and steering by
itself; (5) print a table, write results.json and PNG plots, and explorer.html (the thought explorer's
static page for the last model's test questions: `coconav explore --static`).
"""

from __future__ import annotations

import time
from pathlib import Path

from coconav.common import print0, write_json_atomic
from coconav.config import RunConfig, apply_overrides, from_dict, read_yaml
from coconav.data.splits import load_splits
from coconav.errors import ConfigError
from coconav.evaluate import evaluate
from coconav.model.latent_lm import LatentLM
from coconav.plots import plot_demo
from coconav.recipes import explore, train_coconut

PRESET = Path(__file__).with_name("demo.yaml")
NAVIGATOR_PRESET = Path(__file__).with_name("demo_navigator.yaml")
METHODS = ("no_cot", "cot", "coconut", "navigator")


def demo_config(config: str | None, seed: int, out: Path, overrides: list[str]) -> RunConfig:
    """The COCONUT run's config: the preset, the seed, the output folder, then the overrides."""
    data = read_yaml(config or PRESET)
    data = apply_overrides(data, [f"seed={seed}", f"out_dir={out / 'coconut'}", *overrides])
    cfg = from_dict(RunConfig, data)
    if cfg.curriculum.mode != "coconut":
        raise ConfigError("the demo compares methods itself: leave curriculum.mode at 'coconut'")
    return cfg


def no_cot_config(cfg: RunConfig, out: Path) -> RunConfig:
    """The no-CoT baseline: the same model, data and budget as the CoT stage, without steps."""
    data = apply_overrides(train_coconut.to_dict(cfg), [f"out_dir={out / 'no_cot'}", "curriculum.mode=no_cot",
                                                        "curriculum.thought_loss_weight=0.0"])
    return from_dict(RunConfig, data)


def navigator_config(cfg: RunConfig, out: Path, coconut_final: Path, navigator: str | None) -> RunConfig:
    """The navigator run on top of the COCONUT run: same data, seed and evaluation settings."""
    data = read_yaml(navigator or NAVIGATOR_PRESET)
    data = apply_overrides(data, [f"seed={cfg.seed}", f"out_dir={out / 'navigator'}", f"init_from={coconut_final}",
                                  f"threads={cfg.threads}"])
    data["data"] = train_coconut.to_dict(cfg)["data"]
    data["log"] = train_coconut.to_dict(cfg)["log"]
    return from_dict(RunConfig, data)


def evaluate_checkpoint(folder: Path, cfg: RunConfig, mode: str, thoughts: int, examples) -> dict:
    lm = LatentLM.from_pretrained(folder)
    return evaluate(lm, examples, mode, thoughts, cfg.eval, seed=cfg.seed, show_progress=cfg.log.progress).summary()


def format_table(methods: dict[str, dict]) -> str:
    """A plain-text comparison table (accuracy in %, by difficulty)."""
    diffs = sorted({d for m in methods.values() for d in m["accuracy_by_difficulty"]}, key=int)
    head = ["method", "acc %"] + [f"d={d}" for d in diffs] + ["thoughts", "new tok", "passes", "ms/q"]
    rows = [head]
    for name, m in methods.items():
        rows.append([name, f"{100 * m['accuracy']:.1f}"] + [f"{100 * m['accuracy_by_difficulty'].get(d, 0):.0f}" for d in diffs]
                    + [f"{m['mean_thoughts']:.1f}", f"{m['mean_new_tokens']:.1f}", f"{m['mean_forward_passes']:.1f}",
                       f"{1000 * m['seconds_per_question']:.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def run(out: str | Path = "runs/demo", seed: int = 0, config: str | None = None, overrides: list[str] | None = None,
        navigator: str | None = None, with_navigator: bool = True) -> dict:
    start = time.perf_counter()
    out = Path(out)
    cfg = demo_config(config, seed, out, list(overrides or []))
    base_cfg = no_cot_config(cfg, out)
    for run_dir in (cfg.out_dir, base_cfg.out_dir, out / "navigator"):
        train_coconut.check_run_folder(Path(run_dir), resume=False)
    # 1. the no-CoT baseline, 2. the COCONUT run (stage 0 = CoT)
    print0(f"[1/4] no-CoT baseline -> {base_cfg.out_dir}")
    base = train_coconut.train(base_cfg)
    print0(f"[2/4] CoT (stage 0) and the COCONUT curriculum -> {cfg.out_dir}")
    coconut = train_coconut.train(cfg)
    final = last_stage_checkpoint(Path(cfg.out_dir))
    # 3. the navigator on top of the final COCONUT checkpoint
    nav = None
    if with_navigator:
        nav_cfg = navigator_config(cfg, out, final, navigator)
        print0(f"[3/4] navigator (PPO) on {final} -> {nav_cfg.out_dir}")
        from coconav.recipes import train_navigator

        nav = train_navigator.train(nav_cfg)
    # 4. the CoT model is the COCONUT run's stage-0 checkpoint, evaluated on the same test set
    print0("[4/4] evaluating CoT (stage 0) on the test set")
    test = load_splits(cfg.data, cfg.seed).test
    cot = evaluate_checkpoint(Path(cfg.out_dir) / "checkpoints" / "stage-0", cfg, "cot", 0, test)
    methods = {"no_cot": strip(base["test"]), "cot": cot, "coconut": strip(coconut["test"])}
    results = {"task": cfg.data.task, "seed": seed, "test_size": len(test), "seconds": 0.0,
               "methods": methods, "num_thoughts": coconut["test"]["num_thoughts"],
               "stages": coconut["stages"]}
    if nav is not None:
        methods["navigator"] = {k: v for k, v in nav["navigator"].items() if k != "spearman_steps_thoughts"}
        results["navigator"] = {"spearman_steps_thoughts": nav["navigator"]["spearman_steps_thoughts"],
                                "no_steering": nav["navigator_no_steering"], "no_memory": nav["navigator_no_memory"],
                                "coconut_fixed_same_model": nav["coconut_fixed"], "curve": nav["curve"]}
    results["seconds"] = time.perf_counter() - start
    results["config"] = train_coconut.to_dict(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    plots = plot_demo(results, out)
    plots.append(write_explorer(out, Path(nav_cfg.out_dir) if nav is not None else final))
    print0(f"\n{cfg.data.task} task, seed {seed}, {len(test)} held-out test questions, "
           f"{results['seconds'] / 60:.1f} minutes\n{format_table(methods)}")
    print0(f"wrote {out / 'results.json'}" + "".join(f", {p.name}" for p in plots))
    return results


def write_explorer(out: Path, checkpoint: Path) -> Path:
    """explorer.html beside the plots: the checkpoint's test questions with their thought traces."""
    start = time.perf_counter()
    page = explore.write_static(explore.build(checkpoint, data="test"), out / "explorer.html")
    print0(f"explorer: {page} ({time.perf_counter() - start:.1f} s)")
    return page


def last_stage_checkpoint(run_dir: Path) -> Path:
    """The checkpoint of the highest stage a run trained (stage-K)."""
    stages = sorted((int(p.name.split("-")[1]), p) for p in (run_dir / "checkpoints").glob("stage-*"))
    if not stages:
        raise ConfigError(f"{run_dir} has no stage checkpoint")
    return stages[-1][1]


def strip(test: dict) -> dict:
    """A method's test summary without the run bookkeeping keys."""
    return {k: v for k, v in test.items() if k not in ("mode", "stage", "num_thoughts")}

