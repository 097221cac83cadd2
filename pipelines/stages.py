"""The mill's stages as Beam PTransforms: load specs, compose agents, write tasks, run episodes,
check and judge. Each reads and writes records, so any of them can also start from the previous
stage's Parquet output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from filters.checks import run_checks
from filters.judge import checks_judgement, judge, judge_committee
from filters.reward import score_trajectory, with_reward
from pipelines.batching import FAILURES, AsyncBatchFn, Handled, failure_from, usage_kept
from pipelines.config import RunConfig
from pipelines.resume import StageControl
from pipelines.runtime import model
from pipelines.shared import fixed_batches, stable_seed
from schemas.records import (
    AgentSpec,
    Failure,
    JudgedTrajectory,
    Judgement,
    RLTask,
    Task,
    TokenCount,
    ToolSpec,
    Trajectory,
)
from simulators.episode import RoleClients, agent_system_message, run_episode
from simulators.persona import make_persona
from simulators.sandbox import require_sandbox
from toolspecs.compose import DIFFICULTIES, choose_tools, write_agent, write_task
from toolspecs.domain import load_domain
from toolspecs.task_gate import gate

JUDGE_INPUTS = "judge_inputs"
PAIRS = "pairs"
"""Tagged output of the task stage: each new task with its agent, for the episode stage."""


def _one(element: Any) -> list[Any]:
    return [element]


def streamed(label: str) -> beam.Map:
    """Each element as its own batch, for inputs that arrive one by one as an earlier stage's
    elements finish: a batch of 64 would hold the first 63 back until the 64th came (and the
    last ones until the earlier stage ended), idling the engine through a stage's tail."""
    return label >> beam.Map(_one)


def _controlled(fn: AsyncBatchFn, control: StageControl | None) -> AsyncBatchFn:
    """`fn` with checkpointing, skipping and the failure brake of `control` (None: off)."""
    fn.control = control
    return fn


class _RunFn(AsyncBatchFn):
    """A model-driven step of the run; `total` (default: the episodes) sizes its progress."""

    def __init__(self, config: RunConfig, total: int | None = None) -> None:
        super().__init__(config.episodes if total is None else total, config.in_flight)
        self.config = config


class _RunStage(beam.PTransform):
    """A stage of the run: its config and, when the run checkpoints, its control; `codec` (its
    DoFn class) says how its finished work is checkpointed and read back."""

    codec: type[AsyncBatchFn]

    def __init__(self, config: RunConfig, control: StageControl | None = None) -> None:
        super().__init__()
        self.config = config
        self.control = control


class _ComposeAgentFn(_RunFn):
    stage = "agents"

    def process(self, batch: Iterable[int], pool: list[ToolSpec]) -> Iterator[Any]:  # type: ignore[override]
        self._pool = pool
        yield from super().process(batch)

    async def handle(self, slot: int) -> Handled:
        cfg = self.config
        domain, tools = choose_tools(self._pool, slot, cfg.seed, cfg.min_tools, cfg.max_tools)
        usage: dict[str, TokenCount] = {}
        sampling = cfg.synthesis.model_copy(update={"seed": stable_seed(cfg.seed, "agent", slot)})
        with usage_kept(usage):
            agent = await write_agent(
                model(cfg.models.synthesizer), domain, tools, sampling, usage, cfg.attempts
            )
        return [(slot, agent)], usage

    def failure(self, slot: int, error: BaseException) -> Failure:
        return failure_from(self.stage, f"agent-slot-{slot}", error)

    def checkpoint_key(self, slot: int) -> str:
        return str(slot)

    def encode(self, slot: int, output: tuple[int, AgentSpec]) -> tuple[AgentSpec, str]:
        return output[1], ""

    @staticmethod
    def decode(key: str, record: str) -> tuple[int, AgentSpec]:
        return int(key), AgentSpec.model_validate_json(record)


class ComposeAgents(_RunStage):
    """ToolSpec pool -> (slot, AgentSpec) for every agent the run needs, plus Failures."""

    codec = _ComposeAgentFn

    def expand(self, specs: Any) -> Any:
        n_agents = math.ceil(self.config.episodes / self.config.tasks_per_agent)
        return (
            specs.pipeline
            | "AgentSlots" >> beam.Create(list(range(n_agents)))
            | "BatchSlots" >> fixed_batches(self.config.batch_size)
            | "Compose"
            >> beam.ParDo(
                _controlled(_ComposeAgentFn(self.config, n_agents), self.control),
                beam.pvalue.AsList(specs),
            )
            .with_outputs(FAILURES, main="agents")
        )


class _WriteTaskFn(_RunFn):
    stage = "tasks"

    async def handle(self, element: tuple[int, AgentSpec]) -> Handled:
        index, agent = element
        cfg = self.config
        usage: dict[str, TokenCount] = {}
        sampling = cfg.synthesis.model_copy(update={"seed": stable_seed(cfg.seed, "task", index)})
        difficulty = DIFFICULTIES[index % len(DIFFICULTIES)]
        with usage_kept(usage):
            task = await write_task(
                model(cfg.models.synthesizer), agent, difficulty, index, sampling, usage,
                cfg.attempts,
            )
        return [task], usage

    def failure(self, element: tuple[int, AgentSpec], error: BaseException) -> Failure:
        index, agent = element
        return failure_from(self.stage, f"{agent.id}#task-{index}", error)

    def checkpoint_key(self, element: tuple[int, AgentSpec]) -> str:
        return str(element[0])

    def encode(self, element: tuple[int, AgentSpec], output: Task) -> tuple[Task, str]:
        return output, element[1].id

    @staticmethod
    def decode(key: str, record: str) -> Task:
        return Task.model_validate_json(record)

    @staticmethod
    def attach(task: Task, agent: AgentSpec) -> tuple[Task, AgentSpec]:
        """A reused task with its agent, as the `pairs` output carries new ones."""
        return task, agent

    @staticmethod
    def parent_id(agent: AgentSpec) -> str:
        return agent.id

    def also(self, element: tuple[int, AgentSpec], outputs: list[Any]) -> list[Any]:
        return [beam.pvalue.TaggedOutput(PAIRS, (outputs[0], element[1]))]


class GenerateTasks(_RunStage):
    """(slot, AgentSpec) -> Tasks: `tasks_per_agent` each, `episodes` in all, plus Failures,
    plus each new task paired with its agent (tagged `pairs`).

    The pairs go straight to the episode stage, so an episode starts as soon as its task is
    written: joining tasks with agents by key instead is a barrier that left the engine idle
    from the last task written to the first episode started (~21 s at 1,500 episodes).
    """

    codec = _WriteTaskFn

    def expand(self, agents: Any) -> Any:
        per, total = self.config.tasks_per_agent, self.config.episodes

        def task_slots(element: tuple[int, AgentSpec]) -> Iterator[tuple[int, AgentSpec]]:
            slot, agent = element
            for index in range(slot * per, min((slot + 1) * per, total)):
                yield index, agent

        return (
            agents
            | "TaskSlots" >> beam.FlatMap(task_slots)
            | streamed("BatchTaskSlots")
            | "Write"
            >> beam.ParDo(_controlled(_WriteTaskFn(self.config), self.control))
            .with_outputs(FAILURES, PAIRS, main="tasks")
        )


class LoadDomain(beam.PTransform):
    """A domain folder -> its tool specs, its one agent, its tasks (`episodes` at most) and the
    Failures of entries that could not be used, as four PCollections."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, pbegin: beam.pvalue.PBegin) -> Any:
        assert self.config.domain is not None
        domain = load_domain(self.config.domain)
        if any(task.workspace is not None for task in domain.tasks):
            require_sandbox()  # at start: a machine without sandboxes never runs task code
        return (
            pbegin | "DomainToolSpecs" >> beam.Create(domain.tools),
            pbegin | "DomainAgent" >> beam.Create([domain.agent]),
            pbegin | "DomainTasks" >> beam.Create(domain.tasks[: self.config.episodes]),
            pbegin | "DomainFailures" >> beam.Create(domain.failures),
        )


def join_tasks_with_agents(tasks: Any, agents: Any, label: str) -> Any:
    """(Task, AgentSpec) pairs, joined on the agent id (a shuffle, so it scales out): for tasks
    that did not come paired from the task stage (a domain's, or reused from a checkpoint)."""
    keyed_agents = agents | f"{label}KeyAgents" >> beam.Map(lambda a: (a.id, a))
    keyed_tasks = tasks | f"{label}KeyTasks" >> beam.Map(lambda t: (t.agent_id, t))

    def pairs(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[Task, AgentSpec]]:
        _, grouped = element
        for agent in grouped["agent"][:1]:
            for task in grouped["tasks"]:
                yield task, agent

    return (
        {"agent": keyed_agents, "tasks": keyed_tasks}
        | f"{label}Join" >> beam.CoGroupByKey()
        | f"{label}Pairs" >> beam.FlatMap(pairs)
    )


class _EpisodeFn(_RunFn):
    stage = "episodes"

    async def handle(self, element: tuple[Task, AgentSpec]) -> Handled:
        task, agent = element
        cfg = self.config
        models = RoleClients(
            user=model(cfg.models.user),
            agent=model(cfg.models.agent),
            tool=model(cfg.models.tool),
            names={r: getattr(cfg.models, r).display_name() for r in ("user", "agent", "tool")},
        )
        gate(task, agent)  # no episode for a junk task, wherever it came from
        seed = stable_seed(cfg.seed, "episode", task.id)
        persona = make_persona(f"{cfg.seed}:{task.id}")
        trajectory = await run_episode(task, agent, persona, models, cfg.episode, seed)
        return [trajectory], trajectory.token_counts

    def note(self, outputs: list[Any]) -> str:
        trajectory: Trajectory = outputs[0]
        calls = sum(len(m.tool_calls or []) for m in trajectory.messages)
        return f"{trajectory.end_reason}, {trajectory.turns} turns, {calls} tool calls"

    def failure(self, element: tuple[Task, AgentSpec], error: BaseException) -> Failure:
        return failure_from(self.stage, element[0].id, error)

    def checkpoint_key(self, element: tuple[Task, AgentSpec]) -> str:
        return element[0].id

    def encode(
        self, element: tuple[Task, AgentSpec], output: Trajectory
    ) -> tuple[Trajectory, str]:
        return output, element[0].id

    @staticmethod
    def decode(key: str, record: str) -> Trajectory:
        return Trajectory.model_validate_json(record)

    @staticmethod
    def attach(trajectory: Trajectory, task: Task) -> tuple[Trajectory, Task]:
        """A reused trajectory with its task, as the `judge_inputs` output carries new ones."""
        return trajectory, task

    @staticmethod
    def parent_id(task: Task) -> str:
        return task.id

    def also(self, element: tuple[Task, AgentSpec], outputs: list[Any]) -> list[Any]:
        return [beam.pvalue.TaggedOutput(JUDGE_INPUTS, (outputs[0], element[0]))]


class RunEpisodes(_RunStage):
    """(Task, AgentSpec) -> Trajectories, plus Failures, plus (Trajectory, Task) pairs for the
    judge (tagged `judge_inputs`).

    Tasks arrive one by one as they are written; up to `config.in_flight` episodes run at once
    per worker, a new one starting whenever another ends, each emitted as soon as it ends. The
    judge takes the pairs as they come: joining trajectories with tasks by key instead would
    hold every trajectory in the in-process runner's memory until the last episode ended.
    """

    codec = _EpisodeFn

    def expand(self, pairs: Any) -> Any:
        return (
            pairs
            | streamed("BatchEpisodes")
            | "Play"
            >> beam.ParDo(_controlled(_EpisodeFn(self.config), self.control))
            .with_outputs(FAILURES, JUDGE_INPUTS, main="trajectories")
        )


class _JudgeFn(_RunFn):
    stage = "judge"

    async def handle(self, element: tuple[Trajectory, Task]) -> Handled:
        trajectory, task = element
        cfg = self.config
        usage: dict[str, TokenCount] = {}
        failed = run_checks(trajectory, None, max_turns=cfg.episode.max_turns, task=task)
        if failed:
            judgement = checks_judgement(trajectory, failed)
        else:
            sampling = cfg.judge.sampling.model_copy(
                update={"seed": stable_seed(cfg.seed, "judge", trajectory.id)}
            )
            with usage_kept(usage):
                if cfg.judge.models:
                    result = await judge_committee(
                        trajectory, task, [model(m) for m in cfg.judge.models], sampling,
                        cfg.judge.pass_threshold, cfg.judge.attempts, usage, cfg.judge.voting,
                    )
                else:
                    result = await judge(
                        trajectory, task, model(cfg.models.judge), sampling,
                        pass_threshold=cfg.judge.pass_threshold,
                        max_attempts=cfg.judge.attempts,
                        usage=usage,
                    )
            judgement = result.judgement
        # The outcome reward is recorded beside the verdict; the verdict alone decides sft/.
        judgement = with_reward(judgement, score_trajectory(trajectory, task))
        return [JudgedTrajectory(trajectory=trajectory, judgement=judgement)], usage

    def note(self, outputs: list[Any]) -> str:
        judgement = outputs[0].judgement
        if judgement.passed:
            return f"passed (score {judgement.score:.2f})"
        why = judgement.failed_checks[:1] or [f"score {judgement.score:.2f}"]
        return f"rejected: {why[0][:70]}"

    def failure(self, element: tuple[Trajectory, Task], error: BaseException) -> Failure:
        return failure_from(self.stage, element[1].id, error)

    def checkpoint_key(self, element: tuple[Trajectory, Task]) -> str:
        return element[0].id

    def encode(
        self, element: tuple[Trajectory, Task], output: JudgedTrajectory
    ) -> tuple[Judgement, str]:
        """Only the verdict: the trajectory is in the episodes' checkpoint already."""
        return output.judgement, output.trajectory.id

    @staticmethod
    def decode(key: str, record: str) -> Judgement:
        return Judgement.model_validate_json(record)

    @staticmethod
    def attach(judgement: Judgement, trajectory: Trajectory) -> JudgedTrajectory:
        return JudgedTrajectory(trajectory=trajectory, judgement=judgement)

    @staticmethod
    def parent_id(trajectory: Trajectory) -> str:
        return trajectory.id


class JudgeTrajectories(_RunStage):
    """(Trajectory, Task) -> JudgedTrajectory whatever the verdict, and `failures`."""

    codec = _JudgeFn

    def expand(self, pairs: Any) -> Any:
        return (
            pairs
            | streamed("BatchJudging")
            | "Judge"
            >> beam.ParDo(_controlled(_JudgeFn(self.config), self.control))
            .with_outputs(FAILURES, main="judged")
        )


def rl_task(pair: tuple[Task, AgentSpec]) -> RLTask:
    """A task in the form an RL rollout starts from."""
    task, agent = pair
    return RLTask(
        task_id=task.id,
        agent_id=agent.id,
        domain=agent.domain,
        difficulty=task.difficulty,
        goal=task.goal,
        user_knows=task.user_knows,
        user_withholds=task.user_withholds,
        prompt=[agent_system_message(agent)],
        tools=[t.openai_tool() for t in agent.tools],
        rubric=task.rubric,
        initial_state=task.initial_state,
        expected_outcome=task.expected_outcome,
        tool_specs=[t.model_dump(mode="json") for t in agent.tools],
        workspace=task.workspace,
    )


__all__ = [
    "PAIRS",
    "ComposeAgents",
    "GenerateTasks",
    "JudgeTrajectories",
    "Judgement",
    "LoadDomain",
    "RunEpisodes",
    "join_tasks_with_agents",
    "rl_task",
]
