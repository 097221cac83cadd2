"""Simulated users' personas: Faker for who they are, a seeded draw of how they talk."""

from __future__ import annotations

import functools
import random

from faker import Faker

from schemas.records import Persona, UserStyle

USER_STYLES: tuple[UserStyle, ...] = (
    "terse",
    "verbose",
    "confused",
    "impatient",
    "non-native speaker",
)
STYLE_GUIDES: dict[str, str] = {
    "terse": "You write very short messages, often fragments, with no greetings or thanks.",
    "verbose": "You write long messages with background and asides that do not matter to the "
    "request, but you still only state facts you were given.",
    "confused": "You are unsure of the terms, describe what you want vaguely at first, and "
    "sometimes ask the assistant what it means.",
    "impatient": "You want this done fast: you push the assistant, dislike long answers and "
    "complain when it asks many questions.",
    "non-native speaker": "English is not your first language: you write short, simple "
    "sentences with small grammar mistakes.",
}
"""How each style talks; every persona has one, so a data set covers all of them."""
STYLE_TRAITS = [
    "polite",
    "detail-oriented",
    "informal",
    "formal",
    "skeptical",
    "friendly",
    "cheerful",
    "blunt",
]


@functools.cache
def _faker(locale: str) -> Faker:
    """One Faker per locale and process: building one costs ~3 ms, more than the rest of an
    episode's own CPU; reseeding it per persona keeps every persona determined by its key."""
    return Faker(locale)


def make_persona(key: str, locale: str = "en_US") -> Persona:
    """A persona determined by `key`, so the same task and seed always meet the same user."""
    seed = random.Random(key).getrandbits(32)
    fake = _faker(locale)
    fake.seed_instance(seed)
    rng = random.Random(seed)
    return Persona(
        name=fake.name(),
        occupation=fake.job(),
        city=fake.city(),
        traits=rng.sample(STYLE_TRAITS, k=2),
        style=rng.choice(USER_STYLES),
    )
