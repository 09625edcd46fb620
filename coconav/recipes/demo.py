"""The demo: no-CoT, CoT, COCONUT and the navigator, trained from scratch on a built-in task and compared.

    coconav demo --out runs/demo                  # the embedded preset (configs/demo.yaml, shipped inside the package)
    coconav demo --out runs/demo --seed 1
    coconav demo --out runs/demo_full --config configs/demo_full.yaml

Steps: (1) train a no-CoT model; (2) train the COCONUT run, whose stage 0 is CoT training (as in the
paper, COCONUT starts from the CoT model) and whose stages 1..K replace steps with thoughts; (3)
train the navigator with PPO on the COCONUT model (configs/demo_navigator.yaml); (4)
evaluate all on the same held-out test set — CoT from the stage-0 checkpoint, COCONUT from the last
stage with its fixed thought count for every question, the navigator halting and steering by
itself; (5) print a table, write results.json and PNG plots, and explorer.html (the thought explorer's
static page for the last model's test questions: `coconav explore --static`); each checkpoint behind a row gets
its test numbers and the accuracy-against-compute figure in its model card (README.md).

The config's `demo:` section chooses the rows (`demo.rows`). Besides the four above it offers the
untrained vote baselines at K = `demo.num_trajectories` chains per question (coconav.eval.voting):
`cot_vote` (K CoT chains sampled from the stage-0 checkpoint at `demo.cot_vote_temperature`) and
`coconut_noise_vote` (K COCONUT trajectories of the last stage with Gaussian noise on each thought, the
noise scale chosen from `demo.noise_grid` on the validation split) and `coconut_sample_vote` (K COCONUT
trajectories with plain thoughts and sampled answer tokens, the temperature chosen from
`demo.sample_vote_temperatures` on the validation split), all fused by majority vote; every
row reports `mean_forward_passes` (the vote rows count all K chains). Rows other than the four trained
ones are built by the functions in ``EXTRA_ROWS`` (the hook for further rows such as navigator_multi).
When navigator_multi's preset trains exactly as the navigator's (``training_settings``: only evaluation
settings differ), step 3 trains that one run and its K = 1 rows are the navigator rows.

The compute frontier (coconav.eval.frontier): the COCONUT checkpoint at every fixed count k = 0..its
last stage's on the test split gives results.json's `frontier` (points, their upper concave envelope,
the per-question oracle and the difficulty oracle, on the axis compute_per_question: LM forward passes
plus the navigator's own arithmetic). The same counts on the validation split fit the length rule (one
thought budget per difficulty, chosen on validation by a cost sweep and applied to the test questions):
`frontier.length_rule`. Every navigator row gets envelope_accuracy_at_compute, gain_over_frontier,
oracle_accuracy_at_compute, length_rule_accuracy_at_compute, gain_over_length_rule and
passes_saved_at_equal_accuracy beside its numbers.

    coconav demo --config configs/demo_hard.yaml --out runs/demo_hard
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coconav.common import print0, write_json_atomic
from coconav.config import RunConfig, apply_overrides, from_dict, read_yaml
from coconav.data.records import Example
from coconav.data.splits import load_splits
from coconav.data.tasks import get_task
from coconav.errors import ConfigError
from coconav.eval.evaluate import evaluate, sweep_thoughts
from coconav.eval.frontier import compare_row, row_value
from coconav.eval.plots import plot_demo
from coconav.eval.voting import coconut_noise_vote, coconut_sample_vote, cot_vote
from coconav.io.checkpoint import latest_checkpoint
from coconav.io.hub import PLOT_FILE, record_evaluation
from coconav.model.latent_lm import LatentLM
from coconav.recipes import explore, train_coconut

PRESETS = Path(__file__).resolve().parents[1] / "configs"  # shipped with the package; configs/ in the repository
PRESET = PRESETS / "demo.yaml"
NAVIGATOR_PRESET = PRESETS / "demo_navigator.yaml"
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
    data = apply_overrides(
        train_coconut.to_dict(cfg),
        [f"out_dir={out / 'no_cot'}", "curriculum.mode=no_cot", "curriculum.thought_loss_weight=0.0"],
    )
    return from_dict(RunConfig, data)


def cot_config(cfg: RunConfig, out: Path) -> RunConfig:
    """The CoT baseline as a run of its own, for a COCONUT run that trains no stage 0 (curriculum.no_curriculum or
    start_stage > 0): the same model, data and stage-0 budget, every step in language."""
    data = apply_overrides(
        train_coconut.to_dict(cfg),
        [f"out_dir={out / 'cot'}", "curriculum.mode=cot", "curriculum.thought_loss_weight=0.0"],
    )
    return from_dict(RunConfig, data)


def trains_stage_zero(cfg: RunConfig) -> bool:
    """Whether the COCONUT run's own stage 0 (CoT) gives the CoT row."""
    return cfg.curriculum.stages()[0] == 0


def navigator_config(
    cfg: RunConfig, out: Path, coconut_final: Path, navigator: str | None, name: str = "navigator"
) -> RunConfig:
    """The navigator run (folder out/name) on top of the COCONUT run: same data, seed and evaluation settings."""
    data = read_yaml(navigator or NAVIGATOR_PRESET)
    data = apply_overrides(
        data, [f"seed={cfg.seed}", f"out_dir={out / name}", f"init_from={coconut_final}", f"threads={cfg.threads}"]
    )
    data["data"] = train_coconut.to_dict(cfg)["data"]
    data["log"] = train_coconut.to_dict(cfg)["log"]
    return from_dict(RunConfig, data)


def evaluate_checkpoint(folder: Path, cfg: RunConfig, mode: str, thoughts: int, examples) -> dict:
    lm = LatentLM.from_pretrained(folder)
    return evaluate(lm, examples, mode, thoughts, cfg.eval, seed=cfg.seed, show_progress=cfg.log.progress).summary()


def format_table(methods: dict[str, dict], paper: dict[str, float] | None = None) -> str:
    """A plain-text comparison table (accuracy in %, by difficulty), with a `paper %` column when `paper` is given."""
    diffs = sorted({d for m in methods.values() for d in m["accuracy_by_difficulty"]}, key=int)
    paper_head = ["paper %"] if paper else []
    head = ["method", "acc %", *paper_head] + [f"d={d}" for d in diffs] + ["thoughts", "new tok", "passes", "ms/q"]
    rows = [head]
    for name, m in methods.items():
        published = ([f"{paper[name]:.1f}" if name in paper else "-"]) if paper else []
        rows.append(
            [name, f"{100 * m['accuracy']:.1f}", *published]
            + [f"{100 * m['accuracy_by_difficulty'].get(d, 0):.0f}" for d in diffs]
            + [
                f"{m['mean_thoughts']:.1f}",
                f"{m['mean_new_tokens']:.1f}",
                f"{m['mean_forward_passes']:.1f}",
                f"{1000 * m['seconds_per_question']:.1f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


@dataclass
class RowContext:
    """What a row beyond the four trained ones is built from: the COCONUT run's config, its checkpoints
    (stage 0 = CoT, the last stage = COCONUT and its thought count) and the splits (validation for any
    choice a row makes, test for its numbers)."""

    cfg: RunConfig
    out: Path
    cot_checkpoint: Path
    coconut_checkpoint: Path
    num_thoughts: int
    validation: list[Example]
    test: list[Example]
    navigator_multi_preset: str | None = None
    navigator_multi_results: dict | None = None  # the multi run's results.json when step 3 already trained it


def cot_vote_row(ctx: RowContext) -> tuple[dict, dict]:
    """K sampled CoT chains per test question from the stage-0 checkpoint, majority vote."""
    d = ctx.cfg.demo
    lm = LatentLM.from_pretrained(ctx.cot_checkpoint)
    res = cot_vote(
        lm,
        ctx.test,
        d.num_trajectories,
        ctx.cfg.eval,
        temperature=d.cot_vote_temperature,
        top_p=d.cot_vote_top_p,
        seed=ctx.cfg.seed,
    )
    return res.summary(), {
        "temperature": d.cot_vote_temperature,
        "top_p": d.cot_vote_top_p,
        "checkpoint": ctx.cot_checkpoint.name,
    }


def noise_vote_row(ctx: RowContext) -> tuple[dict, dict]:
    """K noisy COCONUT trajectories per test question, the noise scale chosen on validation, majority vote."""
    d = ctx.cfg.demo
    lm = LatentLM.from_pretrained(ctx.coconut_checkpoint)
    res, record = coconut_noise_vote(
        lm,
        ctx.validation,
        ctx.test,
        d.num_trajectories,
        ctx.num_thoughts,
        ctx.cfg.eval,
        grid=d.noise_grid,
        seed=ctx.cfg.seed,
    )
    print0(f"coconut_noise_vote: sigma {record['noise_sigma']} chosen on validation from {record['noise_grid']}")
    return res.summary(), {**record, "checkpoint": ctx.coconut_checkpoint.name}


def sample_vote_row(ctx: RowContext) -> tuple[dict, dict]:
    """K COCONUT trajectories per test question with sampled answer tokens, the temperature chosen on validation,
    majority vote."""
    d = ctx.cfg.demo
    lm = LatentLM.from_pretrained(ctx.coconut_checkpoint)
    res, record = coconut_sample_vote(
        lm,
        ctx.validation,
        ctx.test,
        d.num_trajectories,
        ctx.num_thoughts,
        ctx.cfg.eval,
        grid=d.sample_vote_temperatures,
        top_p=d.cot_vote_top_p,
        seed=ctx.cfg.seed,
    )
    print0(
        f"coconut_sample_vote: temperature {record['temperature']} chosen on validation from "
        f"{record['temperature_grid']}"
    )
    return res.summary(), {**record, "checkpoint": ctx.coconut_checkpoint.name}


def navigator_multi_row(ctx: RowContext) -> tuple[dict, dict]:
    """The multi-trajectory navigator trained with PPO on the COCONUT checkpoint (its preset's K trajectories per
    question, fused by its ppo.fusion), evaluated on the test set beside the vote rows (trained here unless step 3
    trained it already, as the navigator rows' run). `pass_budget`: the threshold chosen at K for this row
    (navigator.multi_pass_budget)."""
    from coconav.recipes import train_navigator

    cfg = navigator_config(ctx.cfg, ctx.out, ctx.coconut_checkpoint, ctx.navigator_multi_preset, name="navigator_multi")
    k = cfg.ppo.answer_trajectories
    if k != ctx.cfg.demo.num_trajectories:
        print0(f"navigator_multi: K = {k} (its preset), the vote rows use K = {ctx.cfg.demo.num_trajectories}")
    res = ctx.navigator_multi_results if ctx.navigator_multi_results is not None else train_navigator.train(cfg)
    return res["navigator_multi"], {
        "num_trajectories": k,
        "trained_with": cfg.ppo.num_trajectories,
        "fusion": cfg.ppo.fusion,
        "navigator_k1": res["navigator"],
        "no_steering": res.get("navigator_multi_no_steering"),
        "pass_budget": res.get("multi_pass_budget"),
        "preset": ctx.navigator_multi_preset,
    }


# Settings that change only how a trained navigator is evaluated, never its training: two navigator presets equal
# apart from these (and out_dir) train the same navigator.
EVALUATION_ONLY = {
    "navigator": (
        "inference_temperature",
        "inference_halting",
        "halt_threshold",
        "multi_halt_threshold",
        "pass_budget",
        "multi_pass_budget",
        "halt_threshold_grid",
        "halt_threshold_refine",
        "trajectories_budget",
    ),
    "ppo": ("eval_trajectories", "fusion"),  # fusion: the final row and a logged diagnostic (the scorer trains anyway)
}


def training_settings(cfg: RunConfig) -> dict:
    """A navigator run's config without out_dir and the EVALUATION_ONLY settings: what its training depends on."""
    data = train_coconut.to_dict(cfg)
    data.pop("out_dir")
    for section, keys in EVALUATION_ONLY.items():
        for key in keys:
            data[section].pop(key)
    return data


# Rows beyond no_cot / cot / coconut / navigator: name -> (test summary, details for results.json).
EXTRA_ROWS: dict[str, Callable[[RowContext], tuple[dict, dict]]] = {
    "navigator_multi": navigator_multi_row,
    "cot_vote": cot_vote_row,
    "coconut_noise_vote": noise_vote_row,
    "coconut_sample_vote": sample_vote_row,
}


def demo_rows(cfg: RunConfig, with_navigator: bool) -> list[str]:
    """The rows to compute, in the config's order; --no-navigator drops the navigator rows. A row with no
    builder is a ConfigError before any training."""
    rows = [r for r in cfg.demo.rows if with_navigator or not r.startswith("navigator")]
    missing = [r for r in rows if r not in ("no_cot", "cot", "coconut", "navigator") and r not in EXTRA_ROWS]
    if missing:
        raise ConfigError(
            f"demo row(s) {', '.join(map(repr, missing))} cannot be computed by this version of coconav "
            f"(rows it computes: no_cot, cot, coconut, navigator, {', '.join(EXTRA_ROWS)})"
        )
    return rows


def navigator_preset(
    cfg: RunConfig, config: str | None, navigator: str | None, preset: str | None = None
) -> str | None:
    """--navigator-config, else `preset` (default demo.navigator_config; relative to the demo config's folder),
    else None."""
    preset = cfg.demo.navigator_config if preset is None else preset
    if navigator is not None or preset is None:
        return navigator
    path = Path(preset)
    if not path.is_absolute() and config is not None:
        path = Path(config).parent / path
    return str(path)


def run(
    out: str | Path = "runs/demo",
    seed: int = 0,
    config: str | None = None,
    overrides: list[str] | None = None,
    navigator: str | None = None,
    with_navigator: bool = True,
) -> dict:
    start = time.perf_counter()
    out = Path(out)
    cfg = demo_config(config, seed, out, list(overrides or []))
    rows = demo_rows(cfg, with_navigator)
    navigator = navigator_preset(cfg, config, navigator)
    multi = navigator_preset(cfg, config, None, cfg.demo.navigator_multi_config) if "navigator_multi" in rows else None
    # the navigator presets are read now (the COCONUT folder stands in for its final checkpoint): a bad one fails
    # before any training, not after it
    if "navigator" in rows:
        navigator_config(cfg, out, Path(cfg.out_dir), navigator)
    if multi is not None:
        navigator_config(cfg, out, Path(cfg.out_dir), multi, name="navigator_multi")
    base_cfg = no_cot_config(cfg, out)
    own_cot = "cot" in rows and not trains_stage_zero(cfg)
    cot_cfg = cot_config(cfg, out) if own_cot else None
    for run_dir in (cfg.out_dir, base_cfg.out_dir, out / "cot", out / "navigator", out / "navigator_multi"):
        train_coconut.check_run_folder(Path(run_dir), resume=False)
    # 1. the no-CoT baseline, 2. the COCONUT run (stage 0 = CoT)
    base = None
    if "no_cot" in rows:
        print0(f"[1/4] no-CoT baseline -> {base_cfg.out_dir}")
        base = train_coconut.train(base_cfg)
    if cot_cfg is not None:
        print0(f"[1/4] CoT baseline (the COCONUT run trains no stage 0) -> {cot_cfg.out_dir}")
        train_coconut.train(cot_cfg)
    print0(
        f"[2/4] COCONUT ({'CoT as stage 0, then ' if trains_stage_zero(cfg) else ''}the curriculum) -> {cfg.out_dir}"
    )
    coconut = train_coconut.train(cfg)
    final = last_stage_checkpoint(Path(cfg.out_dir))
    # 3. the navigator on top of the final COCONUT checkpoint. When navigator_multi's preset trains exactly as the
    # navigator's (only evaluation settings differ), one run serves both: its K = 1 rows are the navigator rows.
    nav, multi_results = None, None
    if "navigator" in rows:
        nav_cfg = navigator_config(cfg, out, final, navigator)
        multi_cfg = navigator_config(cfg, out, final, multi, name="navigator_multi") if multi is not None else None
        shared = multi_cfg is not None and training_settings(multi_cfg) == training_settings(nav_cfg)
        nav_cfg = multi_cfg if shared else nav_cfg
        print0(
            f"[3/4] navigator (PPO) on {final} -> {nav_cfg.out_dir}"
            + (" (navigator_multi's preset trains the same: one run for K = 1 and K > 1)" if shared else "")
        )
        from coconav.recipes import train_navigator

        nav = train_navigator.train(nav_cfg)
        multi_results = nav if shared else None
    # 4. the CoT model is the COCONUT run's stage-0 checkpoint, evaluated on the same test set
    splits = load_splits(cfg.data, cfg.seed)
    test = splits.test
    stage0 = Path(cot_cfg.out_dir if cot_cfg is not None else cfg.out_dir) / "checkpoints" / "stage-0"
    computed = {"coconut": strip(coconut["test"])}
    if base is not None:
        computed["no_cot"] = strip(base["test"])
    if "cot" in rows:
        print0(f"[4/4] evaluating CoT ({stage0}) on the test set")
        computed["cot"] = evaluate_checkpoint(stage0, cfg, "cot", 0, test)
    results = {
        "task": cfg.data.task,
        "seed": seed,
        "test_size": len(test),
        "seconds": 0.0,
        "methods": {},
        "num_thoughts": coconut["test"]["num_thoughts"],
        "stages": coconut["stages"],
    }
    if cfg.demo.paper_accuracy:
        results["paper"] = {"accuracy": dict(cfg.demo.paper_accuracy), "source": cfg.demo.paper_source}
    if nav is not None:
        computed["navigator"] = {k: v for k, v in nav["navigator"].items() if k != "spearman_steps_thoughts"}
        results["navigator"] = {
            "spearman_steps_thoughts": nav["navigator"]["spearman_steps_thoughts"],
            "no_steering": nav["navigator_no_steering"],
            "no_memory": nav["navigator_no_memory"],
            "coconut_fixed_same_model": nav["coconut_fixed"],
            "curve": nav["curve"],
            "pass_budget": nav.get("pass_budget"),
            "run": Path(nav_cfg.out_dir).name,
        }
    extra = [r for r in rows if r in EXTRA_ROWS]
    if extra:
        ctx = RowContext(
            cfg=cfg,
            out=out,
            cot_checkpoint=stage0,
            coconut_checkpoint=final,
            num_thoughts=coconut["test"]["num_thoughts"],
            validation=splits.validation,
            test=test,
            navigator_multi_preset=multi,
            navigator_multi_results=multi_results,
        )
        results["rows"] = {"num_trajectories": cfg.demo.num_trajectories}
        for name in extra:
            print0(f"[+] {name} (K = {cfg.demo.num_trajectories}) on the test set")
            computed[name], results["rows"][name] = EXTRA_ROWS[name](ctx)
    methods = {name: computed[name] for name in rows}
    results["frontier"] = measure_frontier(cfg, final, results["num_thoughts"], test, splits.validation)
    for name, m in methods.items():
        if name.startswith("navigator"):
            m.update(
                compare_row(
                    m["accuracy"],
                    m["compute_per_question"],
                    results["frontier"]["envelope"],
                    results["frontier"]["oracle"],
                    results["frontier"].get("length_rule"),
                )
            )
    results["methods"] = methods
    results["seconds"] = time.perf_counter() - start
    results["config"] = train_coconut.to_dict(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    plots = plot_demo(results, out)
    cards = {"no_cot": Path(base_cfg.out_dir) if base is not None else None, "cot": stage0 if "cot" in rows else None}
    cards |= {"coconut": final, "navigator": Path(nav_cfg.out_dir) if nav is not None else None}
    cards["navigator_multi"] = out / "navigator_multi" if (out / "navigator_multi" / "checkpoints").is_dir() else None
    update_cards({name: folder for name, folder in cards.items() if folder is not None}, computed, out / PLOT_FILE)
    plots.append(write_explorer(out, Path(nav_cfg.out_dir) if nav is not None else final))
    print0(
        f"\n{cfg.data.task} task, seed {seed}, {len(test)} held-out test questions, "
        f"{results['seconds'] / 60:.1f} minutes\n{format_table(methods, cfg.demo.paper_accuracy)}"
    )
    for line in format_frontier(methods):
        print0(line)
    print0(f"wrote {out / 'results.json'}" + "".join(f", {p.name}" for p in plots))
    return results


def update_cards(checkpoints: dict[str, Path], computed: dict[str, dict], plot: Path) -> None:
    """Once the results and plots exist: the checkpoint behind each trained row (a run folder: its latest) gets the
    accuracy-against-compute figure in its model card, and the CoT checkpoint (the COCONUT run's stage 0, scored
    here) its test numbers; the runs recorded their own test numbers when they ended."""
    for name, folder in checkpoints.items():
        folder = latest_checkpoint(folder)
        evaluation = {"test": {"split": "test", **computed[name]}} if name == "cot" else {}
        record_evaluation(folder, evaluation, plot=plot if plot.is_file() else None)


def format_frontier(methods: dict[str, dict]) -> list[str]:
    """One line per navigator row: its accuracy against the fixed budgets' envelope, the oracle and the length rule
    at its compute (rows of results.json files written before the keys were renamed read too: row_value)."""
    lines = []
    for name, m in methods.items():
        if "gain_over_frontier" not in m:
            continue
        at = row_value(m, "envelope_accuracy_at_compute")
        gain = (
            "cheaper than every fixed budget (no mix of fixed thought counts is this cheap)"
            if at is None
            else f"{100 * m['gain_over_frontier']:+.1f} points over the fixed budgets' envelope ({100 * at:.1f}%)"
        )
        rule, rule_gain = row_value(m, "length_rule_accuracy_at_compute"), row_value(m, "gain_over_length_rule")
        length = "" if rule is None else f", {100 * rule_gain:+.1f} over the length rule ({100 * rule:.1f}%)"
        oracle = row_value(m, "oracle_accuracy_at_compute")
        taken = m.get("headroom_taken")
        ceiling = "" if oracle is None else f"; the oracle reaches {100 * oracle:.1f}%"
        share = "" if taken is None else f" ({100 * taken:.0f}% of that headroom taken)"
        lines.append(
            f"{name}: {100 * m['accuracy']:.1f}% at {m['compute_per_question']:.1f} compute per question "
            f"({m['mean_forward_passes']:.1f} passes): {gain}{length}{ceiling}{share}"
        )
    return lines


def measure_frontier(
    cfg: RunConfig, checkpoint: Path, num_thoughts: int, test: list[Example], validation: list[Example]
) -> dict:
    """The COCONUT checkpoint at every fixed count k = 0..num_thoughts on the test set, and the frontier they span;
    the same counts on the validation set fit the length rule (per difficulty on a built-in task, else per bin of
    question length), applied to the test set."""
    start = time.perf_counter()
    lm = LatentLM.from_pretrained(checkpoint)
    front = sweep_thoughts(
        lm,
        test,
        list(range(num_thoughts + 1)),
        cfg.eval,
        seed=cfg.seed,
        with_difficulty=cfg.data.task != "files",
        fit_examples=validation,
        rule_by_difficulty=cfg.data.task != "files" and get_task(cfg.data.task).difficulty_visible,
    )
    rule = ", the length rule fitted on the validation set" if "length_rule" in front else ""
    print0(f"frontier: k = 0..{num_thoughts} thoughts on the test set{rule} ({time.perf_counter() - start:.1f} s)")
    return front


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
