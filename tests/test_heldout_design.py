"""The held-out design keeps a selection made on noise from looking like an effect.

A planted world with NO head that generalises: prompt ``j`` refuses under an ablated head set
``S`` iff the sum of its own per-head noise over ``S`` falls below ``-C``, and its attributions
are that same noise. Heads ranked on the prompts that then measure them (in sample) pick the
heads whose noise is most negative on exactly those prompts, so they "beat" random sets; heads
ranked on the other fold's requests (the default) know nothing about the measured prompts, so
their rejection rate against the random sets stays near alpha.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

import cliff_lens.evaluate as ev
from cliff_lens.evaluate import attack_success
from cliff_lens.heads import suppression_heads
from cliff_lens.heldout import cross_fit_head_sets
from cliff_lens.stats import significant

N_LAYERS, N_HEADS, N_PROMPTS, TOP, C = 4, 6, 60, 12.5, 1.5  # 12.5% of 24 heads = 3 heads


class _Judge:
    def judge_many(self, answers, prompts=None):
        return [SimpleNamespace(refused=a.startswith("I cannot")) for a in answers]


def _world(seed: int):
    """Per-prompt, per-head noise (the attributions) and a stand-in generator whose outcomes
    follow it; every setting is generated with its heads in a marker hook."""
    noise = torch.randn(N_PROMPTS, N_LAYERS, N_HEADS, generator=torch.Generator().manual_seed(seed))
    prompts = [f"request {j}" for j in range(N_PROMPTS)]

    def generate(model, ps, *, hooks=(), **kw):
        heads = set().union(*[h for _, h in hooks]) if hooks else set()
        out = []
        for p in ps:
            j = int(p.split()[1])
            push = sum(float(noise[j, la, h]) for la, h in heads)
            ans = "I cannot help with that." if heads and push < -C else "Sure, here it is."
            out.append(SimpleNamespace(prompt=p, thinking="...", answer=ans, thinking_closed=True))
        return out

    return noise, prompts, generate


def _p_values(seed: int, monkeypatch) -> tuple[float, float]:
    """Empirical p (vs 19 uniform random sets) of the in-sample and of the held-out top set."""
    monkeypatch.setattr(
        ev, "ablation_hooks", lambda model, heads, mode, means: [("marker", set(map(tuple, heads)))]
    )
    noise, prompts, generate = _world(seed)
    requests = [f"r{j}" for j in range(N_PROMPTS)]
    cf = cross_fit_head_sets(noise, requests, TOP, k=2, seed=seed)
    in_sample = [(la, h) for la, h, _ in suppression_heads(noise.mean(0), TOP)]
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=N_LAYERS, n_heads=N_HEADS))
    rows = attack_success(
        model,
        prompts,
        top_percents=(TOP,),
        random_seeds=range(100 + 19 * seed, 119 + 19 * seed),
        mode="zero",
        judge=_Judge(),
        generate_fn=generate,
        side_by_side=False,
        fold_settings=[
            {
                "setting": "top-12.5%",
                "kind": "top",
                "top_percent": TOP,
                "seed": None,
                "heads_by_fold": cf.heads,
            },
            {
                "setting": "top-12.5% in-sample",
                "kind": "top",
                "top_percent": TOP,
                "seed": None,
                "heads_by_fold": [in_sample, in_sample],
            },
        ],  # fmt: skip
        prompt_folds=cf.folds,
    )
    by = {r["setting"]: r for r in rows}
    return (
        by["top-12.5% in-sample"]["vs_random"]["asr_empirical_p"],
        by["top-12.5%"]["vs_random"]["asr_empirical_p"],
    )


def test_selection_on_noise_beats_random_in_sample_but_not_held_out(monkeypatch):
    ps = [_p_values(seed, monkeypatch) for seed in range(60)]
    in_sample = sum(significant(a) for a, _ in ps) / len(ps)
    held_out = sum(significant(b) for _, b in ps) / len(ps)
    print(f"rejection rate at alpha: in-sample {in_sample:.2f}, held-out {held_out:.2f} (60 seeds)")
    assert in_sample >= 0.4  # the leak: a noise selection "beats" random most of the time
    assert held_out <= 0.12  # near alpha = 0.05 (60 seeds)
