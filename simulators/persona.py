"""Simulated users' personas: Faker for who they are, a seeded draw of how they talk."""

from __future__ import annotations

import functools
import random

from faker import Faker

from schemas.records import Persona

STYLE_TRAITS = [
    "terse",
    "chatty",
    "polite",
    "impatient",
    "uncertain",
    "detail-oriented",
    "informal",
    "formal",
    "skeptical",
    "friendly",
    "in a hurry",
    "non-native English speaker",
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
    )
