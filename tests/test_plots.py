"""The accuracy-against-forward-passes plot holds every row, multi-trajectory rows included."""

from __future__ import annotations

import pytest

from coconav import plots

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
    methods = {"no_cot": row(0.3, 4), "cot": row(0.99, 60), "coconut": row(0.6, 9), "navigator": row(0.62, 8),
               "cot_vote": row(0.99, 300, 5), "coconut_noise_vote": row(0.63, 45, 5)}
    ax = drawn(methods, tmp_path, monkeypatch)
    assert len(ax.collections) == len(methods)
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["no_cot", "cot", "coconut", "navigator", "cot_vote (K=5)", "coconut_noise_vote (K=5)"]
    assert ax.get_xscale() == "log"  # 4 to 300 passes: a linear axis would squash the latent rows


def test_the_standard_demo_plot_stays_linear(tmp_path, monkeypatch):
    ax = drawn({"no_cot": row(0.28, 4), "cot": row(1.0, 28.4), "coconut": row(1.0, 10), "navigator": row(1.0, 8)},
               tmp_path, monkeypatch)
    assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0
