"""resolve_settings: the one place that gives each navigator setting its default and checks its range."""

import pytest

from coconav.config import NavigatorConfig
from coconav.decode.settings import NavigatorSettings, resolve_settings
from coconav.errors import InputError


def test_defaults_come_from_the_navigator_config_at_the_k_in_use():
    cfg = NavigatorConfig(halt_threshold=0.4, multi_halt_threshold=0.7, trajectories_budget=2.0)
    one = resolve_settings(cfg)
    assert one == NavigatorSettings(halt_threshold=0.4, num_trajectories=1, steer=True, memory=True)
    assert resolve_settings(cfg, 5).halt_threshold == 0.7  # K != 1: the multi threshold
    assert resolve_settings(cfg, "auto").halt_threshold == 0.7
    assert resolve_settings(NavigatorConfig(halt_threshold=0.4), 5).halt_threshold == 0.4  # unset: the K = 1 one
    # an explicit threshold replaces both, at any K; steering and memory pass through
    both = resolve_settings(cfg, 3, halt_threshold=0.3, steer=False, memory=False)
    assert (both.halt_threshold, both.num_trajectories, both.steer, both.memory) == (0.3, 3, False, False)


@pytest.mark.parametrize(
    "k, kwargs, cfg, message",
    [
        (1, {"halt_threshold": 1.0}, {}, "--halt-threshold must be in (0, 1), got 1.0"),
        (1, {"halt_threshold": 0.0}, {}, "--halt-threshold must be in (0, 1), got 0.0"),
        (0, {}, {}, "--num-trajectories must be in [1, navigator.max_trajectories=16], got 0"),
        (5, {}, {"max_trajectories": 4}, "--num-trajectories must be in [1, navigator.max_trajectories=4], got 5"),
        ("many", {}, {}, "--num-trajectories must be an integer or 'auto', got 'many'"),
        ("auto", {}, {}, "--num-trajectories auto needs navigator.trajectories_budget"),
    ],
)
def test_out_of_range_values_are_refused_with_a_one_line_error(k, kwargs, cfg, message):
    with pytest.raises(InputError) as err:
        resolve_settings(NavigatorConfig(**cfg), k, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_settings_built_by_hand_are_range_checked_too():
    with pytest.raises(InputError, match=r"--halt-threshold must be in \(0, 1\), got 1.5"):
        NavigatorSettings(halt_threshold=1.5)
