"""How a navigator runs at inference, resolved once: the halting threshold at the K in use, steering, memory and
K (an integer or "auto"). ``resolve_settings`` holds the only default and the only range check of each; decoding
(``NavigatorController``, ``run_groups``, ``multi_answers``), evaluation (``evaluate_navigator``,
``evaluate_multi``) and inference (``CoconavModel``) take the ``NavigatorSettings`` it returns.

    settings = resolve_settings(navigator.cfg, num_trajectories=5, halt_threshold=None, steer=True, memory=True)
    settings.halt_threshold  # navigator.multi_halt_threshold when set (K != 1), else navigator.halt_threshold
"""

from __future__ import annotations

from dataclasses import dataclass

from coconav.config import NavigatorConfig
from coconav.errors import InputError


@dataclass(frozen=True)
class NavigatorSettings:
    """One resolved navigator run. Build it with resolve_settings (defaults from the navigator's config)."""

    halt_threshold: float
    """Where greedy halting stops (halt where p > it), resolved for num_trajectories; in (0, 1)."""
    num_trajectories: int | str = 1
    """K trajectories per question: an integer in [1, navigator.max_trajectories], or "auto" (the K-selector)."""
    steer: bool = True
    """False: the navigator's halting only, plain COCONUT thoughts (the steering ablation)."""
    memory: bool = True
    """False: every memory off (episodic, persistent and the group read)."""

    def __post_init__(self) -> None:
        check_halt_threshold(self.halt_threshold)


def check_halt_threshold(value: float) -> None:
    """The one range check of a halting threshold given at run time (the config checks its own fields)."""
    if not 0 < value < 1:
        raise InputError(f"--halt-threshold must be in (0, 1), got {value}")


def check_trajectories(num_trajectories: int | str, max_trajectories: int) -> None:
    """The one range check of K: an integer in [1, max_trajectories] or "auto"."""
    if isinstance(num_trajectories, str):
        if num_trajectories != "auto":
            raise InputError(f"--num-trajectories must be an integer or 'auto', got {num_trajectories!r}")
    elif not 1 <= num_trajectories <= max_trajectories:
        raise InputError(
            f"--num-trajectories must be in [1, navigator.max_trajectories={max_trajectories}], got {num_trajectories}"
        )


def resolve_settings(
    cfg: NavigatorConfig,
    num_trajectories: int | str = 1,
    *,
    halt_threshold: float | None = None,
    steer: bool = True,
    memory: bool = True,
) -> NavigatorSettings:
    """The settings of a navigator run with config `cfg` at K = `num_trajectories`. `halt_threshold` replaces the
    config's at any K (None: cfg.halt_threshold_at(K): multi_halt_threshold at K != 1 when set, else
    halt_threshold). K "auto" needs cfg.trajectories_budget. Raises a one-line InputError for a value out of range."""
    check_trajectories(num_trajectories, cfg.max_trajectories)
    if num_trajectories == "auto" and cfg.trajectories_budget is None:
        raise InputError(
            "--num-trajectories auto needs navigator.trajectories_budget in the checkpoint's config "
            "(or coconav eval --trajectories-budget B)"
        )
    threshold = cfg.halt_threshold_at(num_trajectories) if halt_threshold is None else float(halt_threshold)
    return NavigatorSettings(halt_threshold=threshold, num_trajectories=num_trajectories, steer=steer, memory=memory)
