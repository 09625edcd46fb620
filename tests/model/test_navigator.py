"""The navigator (coconav/model/navigator.py): a no-op when untrained, masks, log-probs, memory, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from coconav.config import NavigatorConfig
from coconav.data.curriculum import encode_question
from coconav.decode.controller import NavigatorController
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator, NavigatorOutput
from coconav.rl.rollout import roll_out

from conftest import ScheduledHalt, questions, tiny_lm


def nav_cfg(**kw) -> NavigatorConfig:
    base = dict(hidden=16, action_dim=4, max_thoughts=4)
    base.update(kw)
    return NavigatorConfig(**base)


def prompts_of(lm: LatentLM, examples) -> list[list[int]]:
    return [encode_question(lm.tokenizer, ex.question) + [lm.special.bot] for ex in examples]


# -- an untrained navigator feeds plain COCONUT thoughts -------------------------------------------


def test_zero_up_projection_feeds_plain_coconut_thoughts():
    lm = tiny_lm(seed=0)
    torch.manual_seed(1)
    nav = Navigator(lm.hidden_size, nav_cfg(init_halt_bias=0.0, init_log_std=0.5))
    assert bool((nav.up.weight == 0).all())
    examples = questions(6, seed=0)
    prompts = prompts_of(lm, examples)
    # sampled steering actions (nonzero) and sampled halting: every example stops at its own step
    ctrl = NavigatorController(nav, sample=True, generator=torch.Generator().manual_seed(0))
    steered = lm.generate(prompts, controller=ctrl, max_thoughts=4, max_new_tokens=6, return_thoughts=True)
    assert len(set(steered.num_thoughts.tolist())) > 1, "the test needs uneven halting"
    assert any(bool(a.abs().sum() > 0) for a in ctrl.actions), "actions must be nonzero for the test to mean anything"
    plain = lm.generate(prompts, num_thoughts=steered.num_thoughts, max_new_tokens=6, return_thoughts=True)
    assert plain.num_thoughts.tolist() == steered.num_thoughts.tolist()
    # U a = 0 exactly, so thought + U a is bit-for-bit the plain thought
    assert torch.equal(steered.thoughts, plain.thoughts)
    assert steered.sequences.tolist() == plain.sequences.tolist()
    assert steered.texts == plain.texts


def test_untrained_navigator_rollout_answers_equal_coconut_greedy():
    lm = tiny_lm(seed=2)
    torch.manual_seed(3)
    nav = ScheduledHalt(lm.hidden_size, nav_cfg())
    examples = questions(8, seed=1)
    prompts = prompts_of(lm, examples)
    schedule = [0, 4, 1, 2, 3, 4, 2, 1]
    nav.set_schedule(lm.prefill(prompts).last_hidden, schedule)
    traj = roll_out(lm, nav, examples, sample=False, max_new_tokens=6)
    assert traj.num_thoughts.tolist() == schedule
    assert bool(traj.actions.abs().sum() > 0)  # the mean actions are nonzero; U maps them to 0
    plain = lm.generate(prompts, num_thoughts=traj.num_thoughts, max_new_tokens=6)
    assert traj.answer_ids.tolist() == plain.sequences.tolist()
    assert traj.texts == plain.texts
    assert traj.new_tokens.tolist() == plain.new_tokens.tolist()


# -- decision masks -----------------------------------------------------------------------------------


def as_lists(masks) -> dict[str, list[list[int]]]:
    return {k: getattr(masks, k).int().tolist() for k in ("valid", "steer", "decide", "halt")}


def test_step_masks_default():
    nav = Navigator(8, nav_cfg(max_thoughts=4))
    # n = [0, 2, 4], T = 5 = max + 1
    got = as_lists(nav.step_masks(torch.tensor([0, 2, 4]), 5))
    assert got["valid"] == [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]  # t <= n
    assert got["steer"] == [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]  # t < n: a thought was fed
    # a halting decision at every valid step before the budget; n = max halts by force (no decision at t = 4)
    assert got["decide"] == [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert got["halt"] == [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]]  # t == n


def test_step_masks_min_thoughts():
    nav = Navigator(8, nav_cfg(max_thoughts=4, min_thoughts=2))
    got = as_lists(nav.step_masks(torch.tensor([2, 3, 4]), 5))
    # decisions only at 2 <= t < 4 and t <= n
    assert got["decide"] == [[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0]]
    assert got["steer"] == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]


def test_step_masks_halting_off_and_steering_off():
    no_halt = Navigator(8, nav_cfg(max_thoughts=3, halting=False))
    got = as_lists(no_halt.step_masks(torch.tensor([3, 3]), 4))
    assert got["decide"] == [[0, 0, 0, 0]] * 2
    assert got["steer"] == [[1, 1, 1, 0]] * 2
    no_steer = Navigator(8, nav_cfg(max_thoughts=3, steering=False))
    got = as_lists(no_steer.step_masks(torch.tensor([1, 3]), 4))
    assert got["steer"] == [[0, 0, 0, 0]] * 2
    assert got["decide"] == [[1, 1, 0, 0], [1, 1, 1, 0]]
    with pytest.raises(ValueError, match="steering or halting"):
        Navigator(8, nav_cfg(steering=False, halting=False))


# -- log-probabilities --------------------------------------------------------------------------------


def test_log_probs_match_hand_computation():
    nav = Navigator(8, nav_cfg(max_thoughts=4, action_dim=2))
    # one trajectory with n = 1 thought, T = 3 steps:
    #   t=0: steer with a_0 and decide "continue";  t=1: decide "halt" (no action);  t=2: invalid
    mean = torch.tensor([[[0.5, -1.0], [2.0, 2.0], [9.0, 9.0]]])
    std = torch.tensor([0.5, 2.0])
    halt_logits = torch.tensor([[0.3, -1.2, 7.0]])
    out = NavigatorOutput(mean=mean, std=std, halt_logits=halt_logits, values=torch.zeros(1, 3))
    actions = torch.tensor([[[1.0, 0.0], [5.0, 5.0], [5.0, 5.0]]])
    masks = nav.step_masks(torch.tensor([1]), 3)
    temperature = 2.0  # std x 2 = [1, 4]

    def normal_logp(a, mu, sigma):
        return -0.5 * ((a - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    # t=0: N(1; .5, 1) + N(0; -1, 4) + log(1 - sigmoid(.3)) = log sigmoid(-.3)
    lp0 = normal_logp(1.0, 0.5, 1.0) + normal_logp(0.0, -1.0, 4.0) + log_sigmoid(-0.3)
    # t=1: no action (steer mask 0); the halt decision: log sigmoid(-1.2)
    lp1 = log_sigmoid(-1.2)
    # entropies: Gaussian 0.5 + 0.5 log(2 pi) + log sigma per dimension; Bernoulli -p log p - (1-p) log(1-p)
    gauss = sum(0.5 + 0.5 * math.log(2 * math.pi) + math.log(s) for s in (1.0, 4.0))

    def bern(x):
        p = 1 / (1 + math.exp(-x))
        return -p * math.log(p) - (1 - p) * math.log(1 - p)

    logp, ent = nav.log_probs(out, actions, masks, temperature)
    torch.testing.assert_close(logp, torch.tensor([[lp0, lp1, 0.0]]))
    torch.testing.assert_close(ent, torch.tensor([[gauss + bern(0.3), bern(-1.2), 0.0]]))
    # the same numbers from torch.distributions
    from torch.distributions import Bernoulli, Normal

    ref0 = Normal(mean[0, 0], std * temperature).log_prob(actions[0, 0]).sum() + Bernoulli(
        logits=halt_logits[0, 0]
    ).log_prob(torch.tensor(0.0))
    torch.testing.assert_close(logp[0, 0], ref0)


# -- memory changes the decisions ---------------------------------------------------------------------


def test_persistent_memory_changes_the_output_and_switches_off():
    torch.manual_seed(0)
    D = 32
    nav = Navigator(D, nav_cfg(memory_topk=2))
    states = torch.randn(2, 3, D)
    keys = states[:, 0]
    empty = nav(states, keys)
    nav.remember(keys[:1] + 0.01 * torch.randn(1, D), torch.randn(1, D) * 3, torch.tensor([1.0]))
    assert nav.bank.filled == 1
    full = nav(states, keys)
    assert not torch.allclose(full.mean[0], empty.mean[0])
    assert not torch.allclose(full.values[0], empty.values[0])
    assert not torch.allclose(full.halt_logits[0], empty.halt_logits[0])
    # the switch that evaluation flips: the bank is ignored, as if empty
    nav.use_persistent = False
    off = nav(states, keys)
    for name in ("mean", "halt_logits", "values"):
        assert torch.equal(getattr(off, name), getattr(empty, name)), name


def test_remember_writes_only_good_trajectories():
    nav = Navigator(8, nav_cfg(memory_min_return=0.5))
    nav.remember(torch.randn(3, 8), torch.randn(3, 8), torch.tensor([0.49, 0.5, 1.0]))
    assert nav.bank.filled == 2
    torch.testing.assert_close(nav.bank.returns[:2], torch.tensor([0.5, 1.0]))
    off = Navigator(8, nav_cfg(persistent_memory=False))
    assert off.bank is None
    off.remember(torch.randn(1, 8), torch.randn(1, 8), torch.tensor([1.0]))  # a no-op, no error


def test_episodic_memory_changes_the_output_and_switches_off():
    torch.manual_seed(0)
    nav = Navigator(32, nav_cfg(persistent_memory=False))
    states = torch.randn(2, 4, 32)
    on = nav(states, states[:, 0])
    nav.use_episodic = False
    off = nav(states, states[:, 0])
    # step 0 reads only the (zero-initialised) null value: the same either way; later steps differ
    torch.testing.assert_close(on.mean[:, 0], off.mean[:, 0])
    assert not torch.allclose(on.mean[:, 1:], off.mean[:, 1:])
    assert not torch.allclose(on.values[:, 1:], off.values[:, 1:])


def test_outputs_are_causal_over_steps():
    """A rollout sees states h_0..h_t at step t; a replay sees all steps at once: they must agree."""
    torch.manual_seed(0)
    nav = Navigator(32, nav_cfg())
    nav.remember(torch.randn(4, 32), torch.randn(4, 32), torch.ones(4))
    states = torch.randn(2, 5, 32)
    full = nav(states, states[:, 0])
    for t in range(5):
        part = nav(states[:, : t + 1], states[:, 0])
        torch.testing.assert_close(part.mean[:, -1], full.mean[:, t], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(part.halt_logits[:, -1], full.halt_logits[:, t], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(part.values[:, -1], full.values[:, t], atol=1e-6, rtol=1e-5)


# -- sizes and ownership ------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [48, 768])
def test_any_lm_hidden_size(hidden):
    nav = Navigator(hidden, nav_cfg(action_dim=3))
    nav.remember(torch.randn(2, hidden), torch.randn(2, hidden), torch.ones(2))
    states = torch.randn(2, 3, hidden)
    out = nav(states, states[:, 0])
    assert out.mean.shape == (2, 3, 3) and out.std.shape == (3,)
    assert out.halt_logits.shape == (2, 3) and out.values.shape == (2, 3)
    assert nav.steer(torch.randn(2, 5, 3)).shape == (2, 5, hidden)
    assert nav.up.weight.shape == (hidden, 3)


def test_navigator_steers_an_lm_of_another_width():
    lm = tiny_lm(seed=0, hidden=48)
    nav = Navigator(lm.hidden_size, nav_cfg())
    with torch.no_grad():
        nav.up.weight.normal_()
    traj = roll_out(
        lm, nav, questions(3, seed=0), sample=True, max_new_tokens=4, generator=torch.Generator().manual_seed(0)
    )
    assert traj.question_keys.shape == (3, 48) and traj.actions.shape == (3, 4, 4)


def test_parameters_are_separate_from_the_lm():
    lm = tiny_lm(seed=0)
    nav = Navigator(lm.hidden_size, nav_cfg())
    lm_ptrs = {p.data_ptr() for p in lm.parameters()} | {b.data_ptr() for b in lm.buffers()}
    nav_tensors = list(nav.parameters()) + list(nav.buffers())
    assert nav_tensors and not any(t.data_ptr() in lm_ptrs for t in nav_tensors)
    # the navigator's state dict holds only its own tensors
    assert not any(k.startswith(("model.", "causal_lm.")) for k in nav.state_dict())
    # and training it cannot reach the LM: a loss on its outputs gives the LM no gradient
    states = torch.randn(1, 2, lm.hidden_size)
    out = nav(states, states[:, 0])
    (out.mean.sum() + out.values.sum() + nav.steer(torch.ones(1, 4)).sum()).backward()
    assert all(p.grad is None for p in lm.parameters())


# -- multi-trajectory parts: group memory, trajectory embedding, scorer, K-selector, old checkpoints -----


def group_batch(D: int = 32):
    """Two groups (rows 0-2 and 3-4) of random states; peers as the controller builds them."""
    from coconav.model.navigator import gather_peers, peer_index

    torch.manual_seed(1)
    states = torch.randn(5, 3, D)
    group = torch.tensor([0, 0, 0, 1, 1])
    exists = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    return states, group, gather_peers(states, peer_index(group), exists)


def test_peer_index_lists_the_other_rows_of_each_group():
    from coconav.model.navigator import peer_index

    assert peer_index(torch.tensor([0, 0, 0, 1, 1])).tolist() == [[1, 2], [0, 2], [0, 1], [4, -1], [3, -1]]
    assert peer_index(torch.tensor([0, 1])).shape == (2, 0)


def test_group_memory_off_changes_nothing_but_the_group_read():
    states, group, peers = group_batch()
    torch.manual_seed(0)
    nav = Navigator(32, nav_cfg(persistent_memory=False))
    with torch.no_grad():
        nav.group.out.weight.normal_(0, 1.0)
    on = nav(states, states[:, 0], peers=peers)
    nav.use_group = False
    off = nav(states, states[:, 0], peers=peers)
    # off = the same navigator built without group memory (every other parameter equal)
    plain = Navigator(32, nav_cfg(persistent_memory=False, group_memory=False))
    plain.load_state_dict({k: v for k, v in nav.state_dict().items() if not k.startswith("group.")})
    ref = plain(states, states[:, 0])
    for name in ("mean", "halt_logits", "values", "scores"):
        assert torch.equal(getattr(off, name), getattr(ref, name)), name
    assert not torch.allclose(on.mean, off.mean)
    # on: the features differ from off by exactly the group read, added before the trunk
    x = nav.embed_states(states) + nav.episodic(nav.embed_states(states))
    nav.use_group = True
    read = nav.group(x, nav.embed_states(states), peers.index, peers.visible)
    torch.testing.assert_close(nav.features(states, states[:, 0], peers=peers), nav.trunk(x + read))


def test_group_read_sees_only_existing_peer_states_up_to_the_step():
    from coconav.model.navigator import gather_peers, peer_index

    states, group, peers = group_batch()
    torch.manual_seed(0)
    nav = Navigator(32, nav_cfg(persistent_memory=False))
    with torch.no_grad():
        nav.group.out.weight.normal_(0, 1.0)
        nav.mean_head.weight.normal_(0, 1.0)
    exists = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    base = nav(states, states[:, 0], peers=peers)

    def run(changed):
        return nav(changed, changed[:, 0], peers=gather_peers(changed, peer_index(group), exists))

    hidden = states.clone()  # states that do not exist: row 1 after step 0 (it halted), row 2 at step 2
    hidden[1, 1:] += torch.randn(2, 32)
    hidden[2, 2] += torch.randn(32)
    out = run(hidden)
    torch.testing.assert_close(out.mean[0], base.mean[0])  # row 0 reads rows 1, 2: nothing it may see changed
    torch.testing.assert_close(out.mean[3:], base.mean[3:])  # the other group is untouched
    later = states.clone()  # row 0's step 2 exists: rows 1 and 2 read it at step 2, not before
    later[0, 2] += torch.randn(32)
    out = run(later)
    torch.testing.assert_close(out.mean[1:3, :2], base.mean[1:3, :2])
    assert not torch.allclose(out.mean[1:3, 2], base.mean[1:3, 2])
    torch.testing.assert_close(out.mean[3:], base.mean[3:])


def test_new_parts_start_at_zero_and_a_checkpoint_without_them_loads(tmp_path):
    from safetensors.torch import save_file

    from coconav.errors import CheckpointError
    from coconav.io.checkpoint import load_module

    states, group, peers = group_batch()
    torch.manual_seed(0)
    nav = Navigator(32, nav_cfg())
    plain_out = nav(states, states[:, 0])
    full_out = nav(states, states[:, 0], trajectory=torch.tensor([0, 1, 2, 0, 1]), peers=peers)
    for name in ("mean", "halt_logits", "values"):  # untrained: the trajectory index and the group read add nothing
        torch.testing.assert_close(getattr(full_out, name), getattr(plain_out, name))
    assert bool((plain_out.scores == 0).all()) and bool((nav.success_logits(states[:, 0]) == 0).all())
    old = {k: v for k, v in nav.state_dict().items() if not k.startswith(Navigator.OPTIONAL_KEYS)}
    assert len(old) < len(nav.state_dict())
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "navigator.safetensors"))
    torch.manual_seed(5)
    fresh = Navigator(32, nav_cfg())
    with torch.no_grad():
        fresh.group.out.weight.normal_()  # whatever a fresh module holds, the old checkpoint is not blamed
    loaded = load_module(tmp_path, "navigator", Navigator(32, nav_cfg()))
    torch.testing.assert_close(loaded(states, states[:, 0]).mean, plain_out.mean)
    del old["up.weight"]
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "navigator.safetensors"))
    with pytest.raises(CheckpointError, match="missing up.weight"):
        load_module(tmp_path, "navigator", Navigator(32, nav_cfg()))


def test_a_seeded_navigator_initialises_as_before_the_new_parts():
    """The multi-trajectory parts are built on a forked RNG: the old parameters of a seeded navigator, and
    the global RNG after it, are what they were without them."""
    torch.manual_seed(3)
    nav = Navigator(32, nav_cfg())
    after = torch.rand(3)
    torch.manual_seed(3)
    no_group = Navigator(32, nav_cfg(group_memory=False, max_trajectories=2))
    assert torch.equal(torch.rand(3), after)
    for name, p in no_group.state_dict().items():
        assert torch.equal(p, nav.state_dict()[name]) or name.startswith(("trajectory_embedding", "selector")), name


def test_last_only_equals_the_last_step_of_the_full_forward():
    states, group, peers = group_batch()
    torch.manual_seed(0)
    nav = Navigator(32, nav_cfg(memory_topk=2))
    with torch.no_grad():
        nav.group.out.weight.normal_(0, 1.0)
        nav.trajectory_embedding.weight.normal_(0, 1.0)
    nav.remember(states[:2, 0], torch.randn(2, 32), torch.tensor([1.0, 1.0]))
    idx = torch.tensor([0, 1, 2, 0, 1])
    full = nav(states, states[:, 0], idx, peers)
    last = nav(states, states[:, 0], idx, peers, last_only=True)
    for name in ("mean", "halt_logits", "values", "scores"):
        assert getattr(last, name).shape[1] == 1
        torch.testing.assert_close(getattr(last, name)[:, 0], getattr(full, name)[:, -1], atol=1e-6, rtol=1e-5)
