"""Whether a user's message gives away a withheld fact, and whether the assistant asked for it.

Deterministic and cheap, so the user simulator can refuse a leaking reply before it enters the
conversation and `filters.checks` can flag one that did. A fact's *values* are what would give
it away (names, numbers, ids, emails: capitalized or digit-bearing words; for a fact without
any, its content words); its *topic* is the rest (`passenger name is Ada Lovelace` -> values
`ada`, `lovelace`, topic `passenger`, `name`). A message reveals a fact when it holds most of
its values; an assistant message asks for it when it is a question or request that names the
topic (any question, for a fact without a topic).
"""

from __future__ import annotations

import math
import re

STOPWORDS = frozenset(
    "a an and are as at be by for from has have i in is it its me my of on or our the their "
    "they this to was we with you your he she his her them that those these will would".split()
)
REQUEST = re.compile(
    r"\?|\b(please|provide|share|tell|give|what|which|who|when|where|need|confirm|could|can)\b",
    re.IGNORECASE,
)
WORD = re.compile(r"[A-Za-z0-9@][A-Za-z0-9@._-]*")
INVENTED = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+|\b[A-Za-z-]*\d[\w-]{2,}|\b\d{3,}\b")
"""Tokens a user could only know from the task: emails and digit-bearing words (ids, amounts,
dates) of three or more characters."""


def _stem(word: str) -> str:
    word = word.lower().strip("._-")
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def words(text: str) -> set[str]:
    """Normalized words of `text`."""
    return {_stem(w) for w in WORD.findall(text.replace("'", " "))} - {""}


def fact_values(fact: str) -> set[str]:
    """The words that would give `fact` away."""
    found = {
        _stem(w)
        for w in WORD.findall(fact.replace("'", " "))
        if (w[0].isupper() or any(c.isdigit() or c == "@" for c in w))
        and w.lower() not in STOPWORDS
    }
    return found or {w for w in words(fact) if len(w) > 2 and w not in STOPWORDS}


def fact_topic(fact: str) -> set[str]:
    """The words that say what `fact` is about, without giving it away."""
    return {w for w in words(fact) if len(w) > 2 and w not in STOPWORDS} - fact_values(fact)


def reveals(message: str, fact: str) -> bool:
    """Whether `message` holds most of what would give `fact` away."""
    values = fact_values(fact)
    if not values:
        return False
    present = values & words(message)
    return len(present) >= max(1, math.ceil(0.6 * len(values)))


def asks_for(assistant_text: str, fact: str) -> bool:
    """Whether the assistant's message asks for `fact` (a question or request on its topic)."""
    if not assistant_text or not REQUEST.search(assistant_text):
        return False
    topic = fact_topic(fact)
    return not topic or bool(topic & words(assistant_text))


def unprompted_leaks(message: str, withheld: list[str], assistant_texts: list[str]) -> list[str]:
    """Withheld facts `message` reveals that no earlier `assistant_texts` asked for."""
    return [
        fact
        for fact in withheld
        if reveals(message, fact) and not any(asks_for(text, fact) for text in assistant_texts)
    ]


def invented_tokens(message: str, given: list[str]) -> list[str]:
    """Ids, numbers and emails in a user's `message` that appear in none of the `given` texts."""
    known = " ".join(given).lower()
    return [
        token for token in INVENTED.findall(message)
        if token.lower().strip(".,") not in known
    ]
