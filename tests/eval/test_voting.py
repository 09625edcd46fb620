"""The untrained vote baselines: noisy COCONUT trajectories and sampled CoT chains, fused by majority."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from coconav.config import EvalConfig, ModelConfig
from coconav.data.records import Example
from coconav.data.tokenizer import task_tokenizer
from coconav.errors import ConfigError
from coconav.eval import voting
from coconav.eval.evaluate import evaluate
from coconav.eval.voting import (
    NoiseController,
    coconut_noise_vote,
    coconut_sample_vote,
    cot_vote,
    select_noise,
    vote_evaluate,
)
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import GenerationOutput

EXAMPLES = [
    Example("3 + 4 ?", ("<< 7 = 3 + 4 >>",), "7"),
    Example("1 + 2 * 3 - 1 ?", ("<< 3 = 1 + 2 >>", "<< 9 = 3 * 3 >>", "<< 8 = 9 - 1 >>"), "8", difficulty=3),
    Example("5 * 5 ?", ("<< 5 = 5 * 5 >>",), "5"),
]


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return build_latent_lm(
        ModelConfig(name_or_path="scratch-llama", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=32),
        task_tokenizer("arithmetic"),
    )


def test_k1_without_noise_is_plain_coconut(lm):
    cfg = EvalConfig(max_new_tokens=8, batch_size=2)
    plain = evaluate(lm, EXAMPLES, "coconut", 3, cfg)
    voted = vote_evaluate(lm, EXAMPLES, "coconut", 1, cfg, num_thoughts=3, sigma=0.0)
    assert [q.completions for q in voted.questions] == [[q.completion] for q in plain.questions]
    assert [q.forward_passes for q in voted.questions] == [q.forward_passes for q in plain.questions]
    assert voted.accuracy == plain.accuracy and voted.mean_thoughts == 3.0
    # K chains without noise are K copies of the same greedy trajectory: full agreement
    copies = vote_evaluate(lm, EXAMPLES, "coconut", 4, cfg, num_thoughts=3, sigma=0.0)
    assert all(q.completions == [p.completion] * 4 for q, p in zip(copies.questions, plain.questions))
    assert copies.mean_agreement == 1.0


def test_noise_is_sigma_times_rms_times_each_rows_own_stream():
    thought = torch.tensor([[3.0, -4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # rms 2.5 and 1.0
    gens = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    out = NoiseController(0.2, 2, gens)(0, thought, thought, torch.ones(2, dtype=torch.bool))
    eps = torch.stack([torch.randn(4, generator=torch.Generator().manual_seed(s)) for s in (11, 12)])
    assert torch.allclose(out.thought - thought, 0.2 * torch.tensor([[2.5], [1.0]]) * eps)
    assert not out.halt.any()
    # different generators give different noisy thoughts; the same seeds give the same ones
    rows = thought[[0, 0]]
    same = NoiseController(0.2, 2, [torch.Generator().manual_seed(11) for _ in range(2)])(
        0, rows, rows, torch.ones(2, dtype=torch.bool)
    )
    other = NoiseController(0.2, 2, [torch.Generator().manual_seed(s) for s in (11, 12)])(
        0, rows, rows, torch.ones(2, dtype=torch.bool)
    )
    assert torch.equal(same.thought[0], same.thought[1])
    assert not torch.allclose(other.thought[0], other.thought[1])
    # the count is fixed: halting from step num_thoughts on, and no noise is drawn there
    assert NoiseController(0.2, 2, gens)(2, thought, thought, torch.ones(2, dtype=torch.bool)).halt.all()


def fed_thoughts(lm, monkeypatch, **kwargs) -> torch.Tensor:
    """The thoughts every chain fed back, [rows, T, D] in vote_evaluate's row order (the same for any batching)."""
    real, seen = voting.generate_answers, []

    def recording(*args, **kw):
        out = real(*args, **{**kw, "return_thoughts": True})
        seen.append(out.thoughts)
        return out

    monkeypatch.setattr(voting, "generate_answers", recording)
    vote_evaluate(lm, EXAMPLES, "coconut", 3, num_thoughts=3, **kwargs)
    monkeypatch.setattr(voting, "generate_answers", real)
    return torch.cat(seen)


def test_noisy_trajectories_differ_from_each_other_and_from_plain_coconut(lm, monkeypatch):
    cfg = EvalConfig(max_new_tokens=2, batch_size=4)
    plain = fed_thoughts(lm, monkeypatch, cfg=cfg, sigma=0.0)
    noisy = fed_thoughts(lm, monkeypatch, cfg=cfg, sigma=0.3, seed=1)
    assert plain.shape == noisy.shape == (9, 3, 32)
    assert torch.equal(plain[0], plain[1]) and torch.equal(plain[1], plain[2])  # no noise: K copies
    assert not torch.allclose(noisy[0], noisy[1]) and not torch.allclose(noisy[1], noisy[2])
    assert not torch.allclose(noisy, plain)
    # the first noise is 0.3 x the plain first thought's rms x N(0, 1): about 0.3 of its size
    ratio = ((noisy[:, 0] - plain[:, 0]).norm(dim=-1) / plain[:, 0].norm(dim=-1)).mean()
    assert 0.15 < float(ratio) < 0.45
    # a chain's stream depends on (seed, question, chain) only, not on the batching
    again = fed_thoughts(lm, monkeypatch, cfg=EvalConfig(max_new_tokens=2, batch_size=1), sigma=0.3, seed=1)
    assert torch.allclose(again, noisy, atol=1e-5)


def test_forward_passes_are_summed_over_the_k_chains_with_one_shared_prefill(lm):
    cfg = EvalConfig(max_new_tokens=8, batch_size=4)
    res = vote_evaluate(lm, EXAMPLES, "coconut", 3, cfg, num_thoughts=2, sigma=0.5)
    for (
        q
    ) in res.questions:  # the question's prefill once (the chains share it), then each chain's 2 thoughts and tokens
        assert q.thoughts == 3 * 2
        assert q.forward_passes == 1 + 3 * 2 + q.new_tokens  # not 3 * (1 + 2): the prefill is not paid per chain
    assert res.compute_per_question == res.mean_forward_passes  # voting adds no arithmetic of its own
    cot = cot_vote(lm, EXAMPLES, 4, cfg, temperature=1.5, seed=0)
    assert all(q.forward_passes == 1 + q.new_tokens and q.thoughts == 0 for q in cot.questions)
    assert cot.mean_forward_passes == pytest.approx(sum(q.forward_passes for q in cot.questions) / 3)
    assert cot.mean_trajectories == 4.0 and cot.mean_trajectories_by_difficulty == {"1": 4.0, "3": 4.0}


def test_cot_vote_samples_at_its_temperature(lm):
    cfg = EvalConfig(max_new_tokens=6, batch_size=16)
    hot = cot_vote(lm, EXAMPLES, 5, cfg, temperature=3.0, seed=0)
    assert any(len(set(q.completions)) > 1 for q in hot.questions)  # an untrained model at T=3 varies
    assert [q.completions for q in cot_vote(lm, EXAMPLES, 5, cfg, temperature=3.0, seed=0).questions] == [
        q.completions for q in hot.questions
    ]
    assert [q.completions for q in cot_vote(lm, EXAMPLES, 5, cfg, temperature=3.0, seed=1).questions] != [
        q.completions for q in hot.questions
    ]


def scripted(monkeypatch, answers: dict[str, list[str]]):
    """Replace generation: each call hands out the question's next scripted answer (2 tokens each)."""
    given: dict[str, int] = {}

    def fake(lm, prompts, plan, max_new_tokens, *args, **kwargs):
        texts = []
        for p in prompts:
            q = lm.decode_text(torch.tensor(p)).strip()
            key = next(k for k in answers if k in q)
            texts.append(answers[key][given.get(key, 0)])
            given[key] = given.get(key, 0) + 1
        n = len(prompts)
        return GenerationOutput(
            texts=texts,
            sequences=torch.zeros(n, 2, dtype=torch.long),
            num_thoughts=torch.zeros(n, dtype=torch.long),
            new_tokens=torch.full((n,), 2),
            forward_passes=torch.full((n,), 3),
        )

    monkeypatch.setattr(voting, "generate_answers", fake)


def test_majority_vote_over_k_by_hand(lm, monkeypatch):
    scripted(
        monkeypatch,
        {
            "3 + 4": ["### 7", "### 1", "### 7"],
            "1 + 2": ["### 5", "### 8", "### 5"],
            "5 * 5": ["### 2", "### 3", "### 4"],
        },
    )
    res = vote_evaluate(lm, EXAMPLES, "cot", 3, EvalConfig(batch_size=2))
    q = res.questions
    assert [x.fused for x in q] == ["### 7", "### 5", "### 2"]  # majority; a three-way tie goes to the first chain
    assert [x.correct for x in q] == [True, False, False]
    assert [x.chain_correct for x in q] == [[True, False, True], [False, True, False], [False, False, False]]
    assert [x.agreement for x in q] == [2 / 3, 2 / 3, 1 / 3]  # exact fractions of K
    assert res.accuracy == pytest.approx(1 / 3)
    assert res.best_of_k == pytest.approx(2 / 3)
    assert res.mean_chain_accuracy == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert res.mean_forward_passes == 7.0  # one shared prefill + 3 chains x (3 passes - their own prefill)
    assert res.accuracy_by_difficulty == {"1": 0.5, "3": 0.0}
    # abstaining below agreement 2/3 keeps questions 1 and 2: accuracy 1/2 at coverage 2/3
    assert res.accuracy_coverage[-1] == {
        "threshold": pytest.approx(2 / 3),
        "coverage": pytest.approx(2 / 3),
        "accuracy": 0.5,
    }


def test_sigma_is_chosen_on_validation_only(lm, monkeypatch):
    validation, test = EXAMPLES[:2], EXAMPLES[2:]
    calls = []

    def spy(lm_, examples, mode, k, cfg, *, num_thoughts=0, sigma=0.0, seed=0, **kw):
        calls.append((examples, sigma))
        # validation favours 0.1; test would favour 0.4
        acc = {0.1: 0.9}.get(sigma, 0.2) if examples is validation else {0.4: 1.0}.get(sigma, 0.0)
        return dataclasses.replace(voting._aggregate([], k, 0.0), accuracy=acc)

    monkeypatch.setattr(voting, "vote_evaluate", spy)
    result, record = coconut_noise_vote(lm, validation, test, 3, 2, EvalConfig(), grid=(0.0, 0.1, 0.4))
    assert record["noise_sigma"] == 0.1 and record["noise_selected_on"] == "validation"
    assert record["noise_grid"] == [0.0, 0.1, 0.4]
    assert record["noise_validation"]["0.1"]["accuracy"] == 0.9
    assert [s for ex, s in calls if ex is validation] == [0.0, 0.1, 0.4]
    assert [s for ex, s in calls if ex is test] == [0.1]  # test is evaluated once, at the chosen sigma
    assert result.accuracy == 0.0


def test_coconut_sample_vote_samples_answers_after_plain_thoughts(lm):
    """Plain fixed-count thoughts (every chain thinks the same), answer tokens sampled: at a high temperature an
    untrained model's chains differ; the same seed gives the same chains; a near-zero temperature is greedy."""
    cfg = EvalConfig(max_new_tokens=6, batch_size=16)
    hot = vote_evaluate(lm, EXAMPLES, "coconut", 5, cfg, num_thoughts=2, do_sample=True, temperature=3.0, seed=0)
    assert any(len(set(q.completions)) > 1 for q in hot.questions)
    assert all(q.thoughts == 5 * 2 for q in hot.questions)
    again = vote_evaluate(lm, EXAMPLES, "coconut", 5, cfg, num_thoughts=2, do_sample=True, temperature=3.0, seed=0)
    assert [q.completions for q in again.questions] == [q.completions for q in hot.questions]
    cold = vote_evaluate(lm, EXAMPLES, "coconut", 2, cfg, num_thoughts=2, do_sample=True, temperature=1e-4)
    plain = evaluate(lm, EXAMPLES, "coconut", 2, cfg)
    assert [q.completions for q in cold.questions] == [[p.completion] * 2 for p in plain.questions]


def test_sampling_temperature_is_chosen_on_validation_only(lm, monkeypatch):
    validation, test = EXAMPLES[:2], EXAMPLES[2:]
    calls = []

    def spy(lm_, examples, mode, k, cfg, *, num_thoughts=0, do_sample=False, temperature=1.0, **kw):
        calls.append((examples, mode, num_thoughts, do_sample, temperature))
        # validation favours 0.5; test would favour 1.0
        acc = {0.5: 0.9}.get(temperature, 0.2) if examples is validation else {1.0: 1.0}.get(temperature, 0.0)
        return dataclasses.replace(voting._aggregate([], k, 0.0), accuracy=acc)

    monkeypatch.setattr(voting, "vote_evaluate", spy)
    result, record = coconut_sample_vote(lm, validation, test, 3, 2, EvalConfig(), grid=(1.0, 0.5, 0.3))
    assert record["temperature"] == 0.5 and record["temperature_selected_on"] == "validation"
    assert record["temperature_validation"]["0.5"]["accuracy"] == 0.9
    assert [c[4] for c in calls if c[0] is validation] == [0.3, 0.5, 1.0]
    assert [c[1:] for c in calls if c[0] is test] == [("coconut", 2, True, 0.5)]  # test once, at the choice
    assert result.accuracy == 0.0
    with pytest.raises(ConfigError, match="validation split"):
        coconut_sample_vote(lm, [], test, 3, 2, EvalConfig())
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        coconut_sample_vote(lm, validation, test, 3, 2, EvalConfig(), grid=(0.0, 0.5))


def test_select_noise_ties_go_to_the_smaller_sigma(lm):
    sigma, table = select_noise(lm, EXAMPLES, 1, 2, EvalConfig(max_new_tokens=4), grid=(0.0, 0.0001))
    assert sigma == 0.0 and set(table) == {"0.0", "0.0001"}


def test_bad_arguments_are_config_errors(lm):
    with pytest.raises(ConfigError, match="K must be >= 1"):
        vote_evaluate(lm, EXAMPLES, "cot", 0, EvalConfig())
    with pytest.raises(ConfigError, match="sigma must be >= 0"):
        NoiseController(-0.1, 2, [])
    with pytest.raises(ConfigError, match="noise grid is empty"):
        select_noise(lm, EXAMPLES, 2, 2, EvalConfig(), grid=())
    with pytest.raises(ConfigError, match="validation split"):
        select_noise(lm, [], 2, 2, EvalConfig())
