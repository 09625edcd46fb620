"""The CUDA path: the thought loop, activation checkpointing with LoRA in bf16, compiled generation (CUDA graphs)
and navigator rollouts on a GPU, each against its CPU or eager reference on tiny models.

Marked `gpu`: deselected by default, skipped without CUDA. `coconav doctor --gpu` runs them first:

    HF_HUB_OFFLINE=1 python -m pytest -q -m gpu tests
"""

from __future__ import annotations

import pytest
import torch

from coconav.config import LoraConfig, ModelConfig
from coconav.data.tokenizer import task_tokenizer
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import LatentLM
from coconav.rl.rollout import roll_out

from conftest import prompts_for, questions, steering_navigator, tiny_lm, varied_lm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = "cuda"


def thought_batch(lm: LatentLM, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three rows aligned on <bot> (column 4) with 3, 1 and 0 thoughts, left-padded; labels after <eot>."""
    s = lm.special
    ids = torch.tensor(
        [
            [7, 8, 9, 10, s.bot, s.thought, s.thought, s.thought, s.eot, 11, 12, 13],
            [s.pad, s.pad, 9, 10, s.bot, s.thought, s.eot, 11, 12, 13, 14, s.pad],
            [s.pad, 8, 9, 10, s.bot, s.eot, 11, 12, 13, 14, 15, 16],
        ]
    )
    mask = (ids != s.pad).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :9] = -100
    return ids.to(device), mask.to(device), labels.to(device)


def check_thought_loop_matches_cpu(device: str) -> None:
    """The cached thought loop's loss, hidden states and gradients on `device` equal the CPU's."""
    results = []
    for where in ("cpu", device):
        lm = tiny_lm().to(where)
        ids, mask, labels = thought_batch(lm, where)
        out = lm(ids, mask, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.cpu() for n, p in lm.named_parameters() if p.grad is not None}
        results.append((out.loss.detach().cpu(), out.hidden.detach().cpu() * mask.cpu()[..., None], grads))
    (loss, hidden, grads), (loss_d, hidden_d, grads_d) = results
    assert out.num_passes == 4  # the prefix, two single thought columns, the rest
    torch.testing.assert_close(loss_d, loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hidden_d, hidden, atol=1e-4, rtol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_d[name], grad, atol=1e-4, rtol=1e-3, msg=name)


def check_bf16_lora_checkpointing_keeps_cache(device: str) -> None:
    """LoRA over bf16 weights with activation checkpointing: the same loss and adapter gradients as without it
    (the thought loop keeps its cache), and an AdamW step moves the adapters but never the base weights."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, dtype="bfloat16", lora=LoraConfig(r=4)
    )
    lm = build_latent_lm(cfg, task_tokenizer("arithmetic")).to(device).train()
    ids, mask, labels = thought_batch(lm, device)
    runs = []
    for checkpointing in (False, True):
        if checkpointing:
            lm.gradient_checkpointing_enable()
        out = lm(ids, mask, labels=labels)
        out.loss.backward()
        runs.append((out.loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}))
        lm.zero_grad(set_to_none=True)
    (loss, grads), (loss_ckpt, grads_ckpt) = runs
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-4, rtol=1e-4)
    assert grads.keys() == grads_ckpt.keys() and any("lora_B" in n for n in grads)
    for name, grad in grads.items():  # the same forward recomputed: equal up to the GPU's summation order
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-3, rtol=1e-2, msg=name)
    frozen = {n: p.clone() for n, p in lm.named_parameters() if not p.requires_grad}
    adapters = {n: p.clone() for n, p in lm.named_parameters() if "lora_B" in n}
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    lm(ids, mask, labels=labels).loss.backward()
    optimizer.step()
    assert all(not torch.equal(p, adapters[n]) for n, p in lm.named_parameters() if n in adapters)
    assert all(torch.equal(p, frozen[n]) for n, p in lm.named_parameters() if n in frozen)


def check_compiled_generation_matches_eager(device: str) -> None:
    """compile_generation (CUDA graphs on a GPU) gives eager's greedy tokens and thought counts, twice."""
    eager = varied_lm().to(device)
    compiled = varied_lm().to(device).compile_generation()
    prompts = prompts_for(eager, 12)
    counts = [i % 5 for i in range(12)]
    ref = eager.generate(prompts, num_thoughts=counts, max_new_tokens=8, return_thoughts=True)
    for _ in range(2):  # the second call replays what the first compiled
        out = compiled.generate(prompts, num_thoughts=counts, max_new_tokens=8, return_thoughts=True)
        assert torch.equal(out.sequences, ref.sequences) and torch.equal(out.num_thoughts, ref.num_thoughts)
        torch.testing.assert_close(out.thoughts, ref.thoughts, atol=1e-4, rtol=1e-4)


def check_rollout_runs(device: str) -> None:
    """A sampled navigator rollout with K = 3 trajectories per question, on `device`."""
    lm = tiny_lm().to(device)
    navigator = steering_navigator(seed=5).to(device)
    traj = roll_out(
        lm, navigator, questions(4), num_trajectories=3, sample=True, max_new_tokens=6, seeds=torch.arange(12)
    )
    assert traj.counts.tolist() == [3, 3, 3, 3] and len(traj.texts) == 12
    assert bool(torch.isfinite(traj.values).all()) and int(traj.num_thoughts.max()) <= navigator.cfg.max_thoughts


def test_thought_loop_on_cuda_matches_cpu():
    check_thought_loop_matches_cpu(CUDA)


def test_bf16_lora_checkpointing_keeps_the_cache_on_cuda():
    check_bf16_lora_checkpointing_keeps_cache(CUDA)


def test_compiled_generation_with_cuda_graphs_matches_eager():
    check_compiled_generation_matches_eager(CUDA)


def test_navigator_rollout_on_cuda():
    check_rollout_runs(CUDA)
