"""The accuracy-against-forward-passes plot holds every row, multi-trajectory rows included."""

from __future__ import annotations

import pytest

from coconav.eval import plots

plt = pytest.importorskip("matplotlib.pyplot")


def row(acc: float, passes: float, k: float | None = None) -> dict:
    m = {"accuracy": acc, "mean_forward_passes": passes, "accuracy_by_difficulty": {"1": acc}}
    return m if k is None else {**m, "mean_trajectories": k}


def drawn(methods: dict, tmp_path, monkeypatch):
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig) or real_close(fig))
    path = plots.plot_accuracy_vs_passes(methods, tmp_path / "p.png", plt)
    assert path.is_file()
    return figs[0].axes[0]


def test_every_row_is_a_point_and_vote_rows_carry_their_k(tmp_path, monkeypatch):
    methods = {
        "no_cot": row(0.3, 4),
        "cot": row(0.99, 60),
        "coconut": row(0.6, 9),
        "navigator": row(0.62, 8),
        "cot_vote": row(0.99, 300, 5),
        "coconut_noise_vote": row(0.63, 45, 5),
    }
    ax = drawn(methods, tmp_path, monkeypatch)
    assert len(ax.collections) == len(methods)
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["no_cot", "cot", "coconut", "navigator", "cot_vote (K=5)", "coconut_noise_vote (K=5)"]
    assert ax.get_xscale() == "log"  # 4 to 300 passes: a linear axis would squash the latent rows


def test_the_standard_demo_plot_stays_linear(tmp_path, monkeypatch):
    ax = drawn(
        {"no_cot": row(0.28, 4), "cot": row(1.0, 28.4), "coconut": row(1.0, 10), "navigator": row(1.0, 8)},
        tmp_path,
        monkeypatch,
    )
    assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0


def test_the_pass_budget_plot_draws_every_threshold_and_marks_the_choice(tmp_path):
    def choice(chosen: float, budget: float) -> dict:
        tried = [
            {"threshold": t, "accuracy": a, "mean_forward_passes": n}
            for t, a, n in ((0.1, 0.95, 20.0), (0.5, 0.9, 14.0), (0.9, 0.8, 9.0))
        ]
        return {"threshold": chosen, "budget": budget, "fits": True, "tried": tried}

    results = {
        "methods": {"navigator": row(0.9, 14.0)},
        "navigator": {"pass_budget": choice(0.5, 16.0)},
        "rows": {"navigator_multi": {"pass_budget": choice(0.1, 80.0)}},
    }
    paths = plots.plot_demo(results, tmp_path)
    assert tmp_path / "halting_thresholds.png" in paths
    figs = []
    real_close = plt.close
    plt.close = lambda fig=None: figs.append(fig) or real_close(fig)
    try:
        plots.plot_pass_budgets({"navigator": choice(0.5, 16.0)}, tmp_path / "b.png", plt)
    finally:
        plt.close = real_close
    ax = figs[0].axes[0]
    assert list(ax.lines[0].get_xdata()) == [9.0, 14.0, 20.0]  # every threshold, in order of passes
    assert [tuple(o) for o in ax.collections[0].get_offsets()] == [(14.0, 90.0)]  # the chosen one
    assert ax.lines[1].get_xdata()[0] == 16.0  # the budget


def test_the_compute_plot_draws_the_frontier_and_the_threshold_curve(tmp_path, monkeypatch):
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig) or real_close(fig))
    curve = [{"compute_per_question": 9.0, "accuracy": 0.3}, {"compute_per_question": 11.0, "accuracy": 0.6}]
    frontier = {
        "points": [
            {"num_thoughts": k, "compute_per_question": 9.0 + k, "accuracy": a}
            for k, a in ((0, 0.3), (1, 0.4), (2, 0.6))
        ],
        "envelope": curve,
        "oracle": [curve[0], {"compute_per_question": 10.0, "accuracy": 0.8}],
        "difficulty_oracle": [curve[0], {"compute_per_question": 10.5, "accuracy": 0.65}],
        "length_rule": [curve[0], {"compute_per_question": 10.0, "accuracy": 0.45, "budgets": {"1": 1}}],
    }
    tried = [
        {"threshold": t, "accuracy": a, "mean_forward_passes": n, "compute_per_question": n + 0.1}
        for t, a, n in ((0.9, 0.3, 9.5), (0.1, 0.5, 10.5))
    ]
    nav = {**row(0.5, 10.0), "compute_per_question": 10.2}
    plots.plot_accuracy_vs_passes(
        {"coconut": row(0.6, 11.0), "navigator": nav}, tmp_path / "p.png", plt, frontier, {"navigator": tried}
    )
    ax = figs[0].axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines) == [
        "fixed budgets: envelope",
        "per-question oracle",
        "difficulty oracle",
        "length rule (budgets fitted on validation)",
        "navigator: halting thresholds (validation)",
    ]
    assert list(lines["length rule (budgets fitted on validation)"].get_ydata()) == [30.0, 45.0]
    assert list(lines["navigator: halting thresholds (validation)"].get_xdata()) == [9.6, 10.6]  # by compute
    assert list(lines["per-question oracle"].get_ydata()) == [30.0, 80.0]
    assert len(ax.collections) == 1 + 2  # the fixed budgets, then one point per row
    assert list(ax.collections[-1].get_offsets()[0]) == [10.2, 50.0]  # the navigator at its compute, not its passes
