"""Filters between episodes and data sets: deterministic checks first, then the rubric judge."""

from filters.checks import CHECKS, Check, CheckContext, offered_tools, run_checks
from filters.judge import JudgeError, JudgeResult, checks_judgement, judge, judge_messages

__all__ = [
    "CHECKS",
    "Check",
    "CheckContext",
    "JudgeError",
    "JudgeResult",
    "checks_judgement",
    "judge",
    "judge_messages",
    "offered_tools",
    "run_checks",
]
