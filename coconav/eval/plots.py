"""PNG plots of evaluation results (matplotlib is an optional extra: pip install 'coconav[plots]').

paths = plot_demo(results, out_dir)   # [] with a note when matplotlib is missing
"""

from __future__ import annotations

from pathlib import Path

from coconav.common import print0


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print0("matplotlib is not installed: no plots (pip install 'coconav[plots]')")
        return None
    return plt


def plot_accuracy_by_difficulty(methods: dict[str, dict], path: Path, plt) -> Path:
    """One line per method: test accuracy against the number of reasoning steps."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, m) in enumerate(methods.items()):
        by = m["accuracy_by_difficulty"]
        xs = sorted(by, key=int)
        # distinct markers and dashes: methods at the same accuracy stay visible on top of each other
        ax.plot(
            [int(x) for x in xs],
            [100 * by[x] for x in xs],
            marker="osD^v"[i % 5],
            linestyle=["-", "--", ":", "-."][i % 4],
            markersize=8 - i,
            label=name,
        )
    ax.set_xlabel("reasoning steps (difficulty)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Accuracy by difficulty")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_stages(stages: list[dict], path: Path, plt) -> Path:
    """Validation accuracy and forward passes after each curriculum stage."""
    stages = [s for s in stages if "accuracy" in s]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [s["stage"] for s in stages]
    ax.plot(xs, [100 * s["accuracy"] for s in stages], marker="o", color="C0", label="accuracy")
    ax.set_xlabel("curriculum stage (thoughts replace the first k steps)")
    ax.set_ylabel("validation accuracy (%)", color="C0")
    ax.set_ylim(-2, 102)
    ax2 = ax.twinx()
    ax2.plot(xs, [s["mean_forward_passes"] for s in stages], marker="s", color="C1", label="forward passes")
    ax2.set_ylabel("forward passes per question", color="C1")
    ax.grid(alpha=0.3)
    ax.set_title("COCONUT curriculum")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _compute(m: dict) -> float:
    """A row's (or a tried threshold's) x: compute_per_question, else its mean forward passes (older results)."""
    return m.get("compute_per_question", m["mean_forward_passes"])


def plot_accuracy_vs_passes(
    methods: dict[str, dict],
    path: Path,
    plt,
    frontier: dict | None = None,
    thresholds: dict[str, list[dict]] | None = None,
) -> Path:
    """One point per method: accuracy against compute per question (LM forward passes plus the navigator's own
    arithmetic; all chains counted for the multi-trajectory rows, drawn as squares and labelled with their K).
    With `frontier` (coconav.eval.frontier): the fixed budgets (k labelled), their envelope, the oracle and the
    difficulty-oracle curves, and the length rule (budgets fitted on validation, applied to test); `thresholds`:
    per navigator row, its validation accuracy and compute at each halting threshold tried (pass_budget's "tried"),
    as a line. The x axis turns logarithmic when the rows' compute spans
    more than 20x (K sampled CoT chains next to a few thoughts)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    passes = [_compute(m) for m in methods.values()]
    if frontier:
        passes += [p["compute_per_question"] for p in frontier["points"]]
        ax.scatter(
            [p["compute_per_question"] for p in frontier["points"]],
            [100 * p["accuracy"] for p in frontier["points"]],
            s=18,
            color="gray",
            zorder=2,
        )
        for p in frontier["points"]:
            ax.annotate(
                f"k={p['num_thoughts']}",
                (p["compute_per_question"], 100 * p["accuracy"]),
                textcoords="offset points",
                xytext=(3, -10),
                fontsize=7,
                color="gray",
            )
        for key, style, label in (
            ("envelope", "-", "fixed budgets: envelope"),
            ("oracle", "--", "per-question oracle"),
            ("difficulty_oracle", ":", "difficulty oracle"),
            ("length_rule", "-.", "length rule (budgets fitted on validation)"),
        ):
            curve = frontier.get(key) or []
            if curve:
                ax.plot(
                    [c["compute_per_question"] for c in curve],
                    [100 * c["accuracy"] for c in curve],
                    linestyle=style,
                    marker="x" if key == "length_rule" else None,
                    markersize=4,
                    color={"envelope": "gray", "length_rule": "tab:brown"}.get(key, "k"),
                    alpha=0.7,
                    label=label,
                )
    for i, (name, tried) in enumerate((thresholds or {}).items()):
        tried = sorted(tried, key=_compute)
        ax.plot(
            [_compute(t) for t in tried],
            [100 * t["accuracy"] for t in tried],
            marker=".",
            linewidth=1,
            color=f"C{i + 6}",
            alpha=0.8,
            label=f"{name}: halting thresholds (validation)",
        )
    for i, (name, m) in enumerate(methods.items()):
        k = m.get("mean_trajectories", 1.0)
        label = name if k <= 1 else f"{name} (K={k:g})"
        ax.scatter(_compute(m), 100 * m["accuracy"], s=80, color=f"C{i}", marker="o" if k <= 1 else "s", zorder=3)
        # alternate label offsets: methods at the same accuracy sit close together
        ax.annotate(
            label, (_compute(m), 100 * m["accuracy"]), textcoords="offset points", xytext=(6, 8 if i % 2 == 0 else -14)
        )
    ax.set_xlabel("compute per question (LM forward passes)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    if passes and min(passes) > 0 and max(passes) / min(passes) > 20:
        ax.set_xscale("log")
        ax.set_xlim(min(passes) / 1.5, max(passes) * 4)  # room for the labels right of the last point
        ax.set_xlabel("compute per question (LM forward passes, log scale)")
    else:
        ax.set_xlim(0, max(passes, default=1) * 1.2)  # room for the labels right of the last point
    ax.grid(alpha=0.3)
    if frontier or thresholds:
        ax.legend(fontsize=7, loc="best")
    ax.set_title("Accuracy against compute")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(curve: list[dict], path: Path, plt) -> Path:
    """Navigator training: rollout reward, accuracy and mean thoughts per PPO update."""
    xs = [c["update"] for c in curve]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in zip(
        axes,
        ("rollout/reward_mean", "rollout/accuracy", "rollout/mean_thoughts"),
        ("reward", "accuracy (sampled)", "mean thoughts"),
    ):
        ax.plot(xs, [c[key] for c in curve], color="C3")
        ax.set_xlabel("PPO update")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.02, 1.02)  # on the full scale: a zoomed axis makes 1-in-128 flips look like swings
    axes[2].set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_thoughts_by_difficulty(methods: dict[str, dict], path: Path, plt) -> Path:
    """Mean thoughts used per problem difficulty, per method that thinks."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, m) in enumerate(methods.items()):
        by = m.get("mean_thoughts_by_difficulty", {})
        if not by or not any(by.values()):
            continue
        xs = sorted(by, key=int)
        ax.plot([int(x) for x in xs], [by[x] for x in xs], marker="o", color=f"C{i}", label=name)
    ax.set_xlabel("reasoning steps (difficulty)")
    ax.set_ylabel("thoughts used")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Thoughts used by difficulty")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pass_budgets(choices: dict[str, dict], path: Path, plt) -> Path:
    """Halting under a compute budget: validation accuracy against forward passes at every halting threshold
    tried, one curve per navigator row, its budget (dashed) and the threshold chosen (circled)."""
    fig, axes = plt.subplots(1, len(choices), figsize=(5.5 * len(choices), 4), squeeze=False)
    for i, (ax, (name, choice)) in enumerate(zip(axes[0], choices.items())):
        tried = sorted(choice["tried"], key=lambda t: t["mean_forward_passes"])
        ax.plot(
            [t["mean_forward_passes"] for t in tried],
            [100 * t["accuracy"] for t in tried],
            marker=".",
            color=f"C{i + 3}",
        )
        best = next(t for t in tried if t["threshold"] == choice["threshold"])
        ax.scatter(
            [best["mean_forward_passes"]],
            [100 * best["accuracy"]],
            s=120,
            facecolors="none",
            edgecolors="k",
            zorder=3,
            label=f"chosen: p > {choice['threshold']:g}",
        )
        ax.axvline(choice["budget"], color="gray", linestyle="--", label=f"budget {choice['budget']:g}")
        ax.set_xlabel("forward passes per question (validation)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"{name}: one point per halting threshold")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_demo(results: dict, out_dir: str | Path) -> list[Path]:
    """The demo's plots; returns the files written."""
    plt = _pyplot()
    if plt is None:
        return []
    out_dir = Path(out_dir)
    budgets = {
        name: row["pass_budget"]
        for name, row in (
            ("navigator", results.get("navigator", {})),
            ("navigator_multi", results.get("rows", {}).get("navigator_multi", {})),
        )
        if row.get("pass_budget")
    }
    paths = [
        plot_accuracy_by_difficulty(results["methods"], out_dir / "accuracy_by_difficulty.png", plt),
        plot_accuracy_vs_passes(
            results["methods"],
            out_dir / "accuracy_vs_forward_passes.png",
            plt,
            results.get("frontier"),
            {n: b["tried"] for n, b in budgets.items()},
        ),
    ]
    if results.get("stages"):
        paths.append(plot_stages(results["stages"], out_dir / "accuracy_by_stage.png", plt))
    if results.get("navigator", {}).get("curve"):
        paths.append(
            plot_learning_curves(results["navigator"]["curve"], out_dir / "navigator_learning_curves.png", plt)
        )
        paths.append(plot_thoughts_by_difficulty(results["methods"], out_dir / "thoughts_by_difficulty.png", plt))
    if budgets:
        paths.append(plot_pass_budgets(budgets, out_dir / "halting_thresholds.png", plt))
    return paths
