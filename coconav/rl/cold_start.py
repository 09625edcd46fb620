"""The halting head's supervised cold start, before PPO (ppo.cold_start_questions > 0).

Each of a set of training questions is answered at every fixed thought count k = 0..L; its target is the k
with the most reward (coconav.rl.halting.halting_targets), and the halting head learns, from the plain COCONUT
thoughts h_0..h_L of that question, to continue before the target and to halt at it (SLPO's supervised cold
start of the stop gate, arXiv 2607.19691). The answers at each k come from fixed-count evaluation (the recipe
runs it); this module holds the states and the fit.

    states = thought_states(lm, prompts, max_thoughts=L, batch_size=64)          # [N, L+1, D]
    stats = fit_halting(navigator, states, correct, passes, cfg.ppo, cfg.navigator, seed=0)
"""

from __future__ import annotations

import torch

from coconav.config import NavigatorConfig, PPOConfig
from coconav.decode.trace import TraceController
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator
from coconav.rl.halting import halting_loss, halting_targets


def thought_states(lm: LatentLM, prompts: list[list[int]], max_thoughts: int, batch_size: int) -> torch.Tensor:
    """The plain COCONUT states h_0..h_L of each prompt (L = max_thoughts thoughts, no navigator), on the CPU.

    Shape: [N, L+1, D]."""
    states = []
    with torch.no_grad():
        for lo in range(0, len(prompts), batch_size):
            batch = prompts[lo : lo + batch_size]
            tracer = TraceController(None, torch.full((len(batch),), max_thoughts))
            lm.generate(batch, num_thoughts=0, controller=tracer, max_thoughts=max_thoughts, max_new_tokens=1)
            states.append(tracer.states().cpu())
    return torch.cat(states)


def fit_halting(
    navigator: Navigator,
    states: torch.Tensor,
    correct: torch.Tensor,
    passes: torch.Tensor,
    ppo: PPOConfig,
    nav: NavigatorConfig,
    seed: int,
) -> dict[str, float]:
    """Teach the halting head each question's best thought count: ppo.cold_start_epochs of minibatch Adam
    (ppo.cold_start_lr) on the halting loss; returns the loss before and after, how often greedy halting hits
    the target, the mean target and the accuracy at the targets (cold_start/* metrics).

    Shape: states [N, L+1, D]; correct, passes [N, L+1] (column k: the answer at k thoughts)."""
    targets = halting_targets(correct, passes, ppo.thought_cost, nav.min_thoughts)
    dev = next(navigator.parameters()).device
    optimizer = torch.optim.Adam(navigator.parameters(), lr=ppo.cold_start_lr)
    gen = torch.Generator().manual_seed(seed)
    batch = max(1, len(states) // max(1, ppo.num_minibatches))

    def loss_on(idx: torch.Tensor) -> torch.Tensor:
        s = states[idx].to(dev)
        out = navigator(s, s[:, 0])
        return halting_loss(out.halt_logits, targets[idx], nav.min_thoughts, nav.max_thoughts)

    navigator.train()
    with torch.no_grad():
        before = float(loss_on(torch.arange(len(states))))
    for _ in range(ppo.cold_start_epochs):
        for idx in torch.randperm(len(states), generator=gen).split(batch):
            loss = loss_on(idx)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(navigator.parameters(), ppo.max_grad_norm)
            optimizer.step()
    navigator.eval()
    with torch.no_grad():
        after = float(loss_on(torch.arange(len(states))))
        halts = navigator(states.to(dev), states[:, 0].to(dev)).halt_logits.cpu() > 0  # [N, L+1]
    halts[:, : nav.min_thoughts] = False
    halts[:, nav.max_thoughts] = True
    greedy = halts.float().argmax(1)  # the first step where greedy halting stops
    return {
        "cold_start/loss_before": before,
        "cold_start/loss_after": after,
        "cold_start/hit_rate": float((greedy == targets).float().mean()),
        "cold_start/target_thoughts": float(targets.float().mean()),
        "cold_start/oracle_accuracy": float(correct.gather(1, targets[:, None]).float().mean()),
    }
