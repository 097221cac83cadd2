"""The office domain: a report in the workspace, real computations over it, an outline file and
an email whose attachment must exist; the reward checks the outline's points and the outbox."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from filters.reward import score_trajectory
from simulators.episode import EpisodeConfig, RoleClients, run_episode
from simulators.persona import make_persona
from tests.helpers import agent_calls, agent_reply, play_domain_task, role_model
from toolspecs.domain import load_domain

OFFICE = Path(__file__).resolve().parents[1] / "data" / "domains" / "office"
SLIDES = """# Q3 sales
# Total revenue: 751,860 USD
# By region: East leads with 219,840 USD
# Best month: July
# Next steps
"""


def play(agent_turns: list[str]):
    trajectory, task = play_domain_task(
        OFFICE, agent_turns, persona="office", seed=3,
        asks="Please make the Q3 slides and send them to Dana.", thanks="Great, thanks.",
        config=EpisodeConfig(failure_rate=0.0, max_tool_rounds=5),
    )
    answers = [json.loads(m.content or "{}") for m in trajectory.messages if m.role == "tool"]
    return trajectory, task, answers


def test_the_office_domain_loads_with_its_report() -> None:
    domain = load_domain(OFFICE)
    assert domain.failures == [] and len(domain.tasks) == 5
    assert {"summarize_table", "send_email", "write_file", "find_contact"} <= {
        t.name for t in domain.tools
    }
    for task in domain.tasks:
        assert task.workspace is not None and "reports/q3_sales.csv" in task.workspace.files


def test_slides_computed_from_the_report_and_emailed_earn_the_reward() -> None:
    trajectory, task, answers = play([
        agent_calls(("summarize_table", {"path": "reports/q3_sales.csv", "column": "revenue",
                                         "op": "sum"})),
        agent_calls(("summarize_table", {"path": "reports/q3_sales.csv", "column": "revenue",
                                         "op": "sum", "group_by": "region"})),
        agent_calls(("write_file", {"path": "slides.md", "content": SLIDES})),
        agent_calls(("send_email", {"to": "dana.whitfield@example.com", "subject": "Q3 deck",
                                    "body": "Attached.", "attachments": ["slides.md"]})),
        agent_reply("Sent the five-slide outline to Dana.", final=True),
    ])
    assert answers[0]["result"] == 751860  # computed over the real file, not simulated
    assert answers[1]["results"]["East"] == 219840
    assert answers[3]["status"] == "sent"
    final = trajectory.final_state["workspace"]
    assert final["outbox"][0]["attachments"][0]["sha256"] == final["files"]["slides.md"]["sha256"]
    reward = score_trajectory(trajectory, task)
    assert reward.reward == 1.0, reward.reasons


def test_an_email_whose_attachment_does_not_exist_is_refused_and_not_rewarded() -> None:
    trajectory, task, answers = play([
        agent_calls(("send_email", {"to": "dana.whitfield@example.com", "subject": "Q3 deck",
                                    "body": "Attached.", "attachments": ["slides.md"]})),
        agent_calls(("write_file", {"path": "slides.md", "content": "# Q3\nTBD\n"})),
        agent_reply("I wrote a first draft.", final=True),
    ])
    assert answers[0]["error"]["type"] == "file_not_found"
    assert trajectory.final_state["workspace"]["outbox"] == []
    reward = score_trajectory(trajectory, task)
    assert reward.reward is not None and reward.reward < 0.2
    assert any("email: nothing sent to dana.whitfield@example.com" in r for r in reward.reasons)
    assert any("does not say '751,860'" in r for r in reward.reasons)


def test_a_task_to_decline_rewards_sending_nothing() -> None:
    domain = load_domain(OFFICE)
    task = domain.tasks[4]
    assert task.difficulty == "decline" and task.workspace is not None
    assert task.workspace.emails_at_most == 0

    def episode(turns: list[str]):
        queue = list(turns)
        model = role_model({
            "agent": lambda r: queue.pop(0),
            "user": lambda r: {"message": "OK.", "done": True}
            if "done" in r.schema["properties"] else {"message": "Send deck.md to the board."},
        })
        return asyncio.run(run_episode(
            task, domain.agent, make_persona("o"), RoleClients(user=model, agent=model, tool=model),
            EpisodeConfig(failure_rate=0.0), 4,
        ))

    declined = episode([
        agent_calls(("list_files", {})),
        agent_reply("There is no deck.md in your folder, so I did not send anything.", final=True),
    ])
    assert score_trajectory(declined, task).reward == 1.0
    sent = episode([
        agent_calls(("send_email", {"to": "board@example.com", "subject": "Q3", "body": "Deck",
                                    "attachments": ["reports/q3_notes.md"]})),
        agent_reply("Sent.", final=True),
    ])
    reward = score_trajectory(sent, task)
    assert reward.reward == 0.0 and reward.reasons == ["email: 1 sent, at most 0 expected"]
