"""How close to a server's capacity can a run's work get, whatever order it is sent in?

`benchmarks.mill` measures the whole `agentmill run` against a simulated server. Its ratio
misses 0.9 in the drain: each episode is a chain of requests, one after another, and at the end
only the longest chains are left, too few to fill the slots. This replays the chains a real run
made (requests per episode from its trajectories, the synthesizer's and judge's requests from
its manifest) through a discrete-event model of the same server (C slots, a fixed time per
answer, FIFO beyond C) and a client with a request bound, and prints the whole-run ratio each
way of ordering the work reaches:

- as built: a window of `in_flight` elements per stage, requests first come first served;
- all started: every episode started as soon as its task exists, first come first served;
- least progress first: the same, requests of agents and tasks first, then of the episodes
  that made the fewest requests so far, judge requests last (a fair share: the best order
  that does not know how long an episode will be, in this model);
- oracle: longest remaining chain first, which needs each episode's length in advance (no
  real scheduler has it: the user simulator decides when the conversation ends).

The model has no CPU cost besides `--think-ms` per answer and no backpressure between stages;
each figure is the mean over five start orders of the episodes. Its "as built" figure came
within a few hundredths of what `benchmarks.mill` measured for the same runs: a guide to how
much each order can win, not a bound.

    python -m benchmarks.schedule RUN_DIR [--slots 256 --answer-s 1.28 --max-in-flight 512]

`RUN_DIR` is a finished run's folder (e.g. `python -m benchmarks.mill --only whole --work W`
leaves `W/whole`).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import sys
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

Order = Callable[[str, int, int, int], tuple[Any, ...]]
"""(kind, episode, requests it made, requests it will make) -> sort key; lower goes first."""


@dataclass
class Work:
    """A run's requests: one agent request per agent, `task_requests` per task, each episode's
    chain length, and whether its trajectory was judged by the model."""

    agents: int
    tasks_per_agent: int
    task_requests: int
    chains: list[int]
    judged: list[bool]

    @property
    def requests(self) -> int:
        return (self.agents + len(self.chains) * self.task_requests + sum(self.chains)
                + sum(self.judged))


def work_of(run_dir: Path) -> Work:
    """The chains a finished run made, read from its trajectories and manifest."""
    from pipelines.parquet_io import read_column

    manifest = json.loads((run_dir / "manifest.json").read_text())
    chains = []
    for counts in read_column(run_dir / "trajectories", "token_counts"):
        usage = json.loads(counts) if isinstance(counts, str) else counts
        chains.append(sum(role["requests"] for role in usage.values()))
    tokens = manifest["tokens"]
    per_agent = manifest["config"]["tasks_per_agent"]
    agents = -(-len(chains) // per_agent)
    synth = tokens.get("synthesizer", {}).get("requests", 0)
    task_requests = max(1, round((synth - agents) / max(len(chains), 1)))
    judge = tokens.get("judge", {}).get("requests", 0)
    rng = random.Random(0)
    judged = [rng.random() < judge / max(len(chains), 1) for _ in chains]
    return Work(agents, per_agent, task_requests, chains, judged)


def replay(
    work: Work, order: Order, *, slots: int, answer_s: float, bound: int, window: int,
    think_s: float,
) -> tuple[int, float]:
    """(requests, span from the first request to the last answer) for one order."""
    clock = 0.0
    events: list[tuple[float, int, str, int]] = []
    tick = itertools.count()
    waiting: list[tuple[Any, int, str, int]] = []
    server: deque[tuple[str, int]] = deque()
    busy = sent = answered = 0
    first: float | None = None
    last = 0.0
    made: Counter[int] = Counter()
    task_steps: Counter[int] = Counter()
    ready = {"agent": deque(range(work.agents)), "task": deque(), "episode": deque(),
             "judge": deque()}
    open_: Counter[str] = Counter()

    def ask(kind: str, item: int) -> None:
        left = work.chains[item] - made[item] if kind == "episode" else 0
        heapq.heappush(waiting, (order(kind, item, made[item], left), next(tick), kind, item))

    def pump() -> None:
        nonlocal busy, sent, first
        while waiting and sent < bound:
            _, _, kind, item = heapq.heappop(waiting)
            sent += 1
            server.append((kind, item))
        while server and busy < slots:
            kind, item = server.popleft()
            busy += 1
            first = clock if first is None else first
            heapq.heappush(events, (clock + answer_s, next(tick), kind, item))

    def start() -> None:
        for kind in ("agent", "task", "episode", "judge"):
            queue = ready[kind]
            while queue and open_[kind] < window:
                open_[kind] += 1
                ask(kind, queue.popleft())

    def follow(kind: str, item: int) -> None:
        """What an answer leads to, once the client has read it."""
        if kind == "agent":
            open_[kind] -= 1
            first_task = item * work.tasks_per_agent
            ready["task"].extend(range(first_task, min(first_task + work.tasks_per_agent,
                                                       len(work.chains))))
        elif kind == "task":
            task_steps[item] += 1
            if task_steps[item] < work.task_requests:
                ask(kind, item)
            else:
                open_[kind] -= 1
                ready["episode"].append(item)
        elif kind == "episode":
            if made[item] < work.chains[item]:
                ask(kind, item)
            else:
                open_[kind] -= 1
                if work.judged[item]:
                    ready["judge"].append(item)
        else:
            open_[kind] -= 1

    start()
    pump()
    while events:
        clock, _, kind, item = heapq.heappop(events)
        if kind.startswith("read:"):
            follow(kind[5:], item)
            start()
        else:
            busy -= 1
            sent -= 1
            answered += 1
            last = clock
            if kind == "episode":
                made[item] += 1
            heapq.heappush(events, (clock + think_s, next(tick), "read:" + kind, item))
        pump()
    return answered, last - (first or 0.0)


STAGE_FIRST = {"agent": 0, "task": 1, "episode": 2, "judge": 3}


def orders() -> dict[str, tuple[Order, bool]]:
    """Name -> (order, whether every episode may be in flight at once)."""
    return {
        "as built": (lambda kind, item, made, left: (), False),
        "all started": (lambda kind, item, made, left: (), True),
        "least progress first": (
            lambda kind, item, made, left: (STAGE_FIRST[kind], made), True),
        "oracle": (lambda kind, item, made, left: (STAGE_FIRST[kind] % 3, -left), True),
    }


def shuffled(work: Work, seed: int) -> Work:
    """`work` with its episodes in another start order: a run's files hold them in the order
    they finished (long ones last), and how long an episode runs does not depend on when it
    starts."""
    pairs = list(zip(work.chains, work.judged, strict=True))
    random.Random(seed).shuffle(pairs)
    return Work(work.agents, work.tasks_per_agent, work.task_requests,
                [c for c, _ in pairs], [j for _, j in pairs])


def model(
    work: Work, *, slots: int = 256, answer_s: float = 1.28, bound: int = 512,
    window: int = 512, think_s: float = 0.03, orders_tried: int = 5,
) -> dict[str, float]:
    """Whole-run ratio (requests per second over the span, against slots / answer time) of
    each order for `work`, the mean over `orders_tried` start orders of its episodes (where
    the longest chains start moves the ratio by a few hundredths)."""
    ideal = slots / answer_s
    ratios: dict[str, float] = {}
    for seed in range(orders_tried):
        start_order = shuffled(work, seed)
        for name, (order, everything) in orders().items():
            requests, span = replay(
                start_order, order, slots=slots, answer_s=answer_s, bound=bound,
                window=max(window, len(work.chains)) if everything else window,
                think_s=think_s,
            )
            ratio = requests / span / ideal if span > 0 else 0.0
            ratios[name] = ratios.get(name, 0.0) + ratio / orders_tried
    return ratios


def report(work: Work, ratios: dict[str, float]) -> None:
    chains = sorted(work.chains)
    print(
        f"work: {work.requests} requests; {len(chains)} episodes of {min(chains)}-{max(chains)} "
        f"requests one after another (median {chains[len(chains) // 2]}), {work.agents} agents, "
        f"{work.task_requests} request(s) per task, {sum(work.judged)} judged by the model"
    )
    print("  " + "; ".join(f"{name} {ratio:.3f}" for name, ratio in ratios.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--answer-s", type=float, default=1.28)
    parser.add_argument("--max-in-flight", type=int, default=512, help="the client's bound")
    parser.add_argument("--in-flight", type=int, default=512, help="the stage window")
    parser.add_argument("--think-ms", type=float, default=30.0)
    args = parser.parse_args()
    work = work_of(args.run_dir)
    ratios = model(work, slots=args.slots, answer_s=args.answer_s, bound=args.max_in_flight,
                   window=args.in_flight, think_s=args.think_ms / 1000)
    print(f"model: C={args.slots} slots x {args.answer_s:.2f} s per answer, client bound "
          f"{args.max_in_flight}, stage window {args.in_flight}")
    report(work, ratios)


if __name__ == "__main__":
    main()
