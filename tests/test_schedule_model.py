"""The scheduling model behind `benchmarks.schedule`: it serves every request once, fills the
slots when there is enough independent work, and tells the orders apart when chains differ."""

from __future__ import annotations

import random

from benchmarks.schedule import Work, model, orders, replay


def _work(chains: list[int]) -> Work:
    return Work(agents=len(chains) // 2, tasks_per_agent=2, task_requests=1, chains=chains,
                judged=[True] * len(chains))


def test_every_request_is_served_once_whatever_the_order() -> None:
    work = _work([random.Random(i).randint(1, 9) for i in range(40)])
    for order, everything in orders().values():
        requests, span = replay(work, order, slots=8, answer_s=1.0, bound=16,
                                window=40 if everything else 4, think_s=0.0)
        assert requests == work.requests
        assert span >= max(work.chains) + 3  # agent, task, the chain, the judge


def test_short_independent_chains_fill_the_slots() -> None:
    ratios = model(_work([1] * 800), slots=8, answer_s=1.0, bound=8, window=64, think_s=0.0)
    assert min(ratios.values()) > 0.95


def test_long_chains_at_the_end_cost_capacity_and_only_knowing_them_wins_it_back() -> None:
    """Chains shaped like a mill run's (mostly short, a few up to ten times longer)."""
    rng = random.Random(0)
    chains = [min(29, 3 + int(rng.expovariate(1 / 5.5))) for _ in range(1500)]
    ratios = model(_work(chains), slots=256, answer_s=1.28, bound=256, window=512)
    assert ratios["all started"] > ratios["as built"] + 0.02
    assert ratios["least progress first"] < 0.9
    assert ratios["oracle"] > ratios["least progress first"] + 0.05
