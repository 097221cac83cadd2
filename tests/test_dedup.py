"""Exact and near-duplicate removal: in memory and as Beam transforms, with the same result."""

from __future__ import annotations

import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.pool import Dedup, NearDuplicateRate
from pipelines.shared import in_process_pipeline
from schemas.records import ToolSpec
from toolspecs import dedup as dd
from toolspecs.load import load_library


@pytest.fixture(scope="module")
def library() -> list[ToolSpec]:
    return load_library()


def variant(spec: ToolSpec, name: str, source: str = "synthetic", drop_word: bool = True,
            description: str | None = None) -> ToolSpec:
    text = description or spec.description
    if drop_word and description is None:
        words = text.split()
        text = " ".join([*words[:-1], "please."])
    return spec.model_copy(update={"name": name, "description": text, "source": source, "id": ""})


def fresh(spec: ToolSpec) -> ToolSpec:
    return ToolSpec.model_validate(spec.model_dump(exclude={"id"}))


def test_same_name_is_an_exact_duplicate_and_the_authored_tool_stays(library) -> None:
    original = library[0]
    copy = fresh(variant(original, original.name, description="Something else entirely."))
    kept, removed = dd.dedup([copy, original])
    assert kept == [original]
    assert removed == [dd.duplicate_record(copy, original.id, "exact", 1.0)]


def test_near_identical_description_and_parameters_is_a_near_duplicate(library) -> None:
    base = max(library, key=lambda s: len(s.description.split()))
    near = fresh(variant(base, base.name + "_v2"))
    far = fresh(variant(base, "summarize_reviews", description="Summarize what customers "
                        "wrote about a product in their reviews, with the overall mood."))
    assert dd.jaccard(dd.token_hashes(base), dd.token_hashes(near)) >= dd.NEAR_THRESHOLD
    kept, removed = dd.dedup([*library, near, far])
    assert {r["id"]: r["kind"] for r in removed} == {near.id: "near"}
    assert removed[0]["duplicate_of"] == base.id
    assert far in kept and len(kept) == len(library) + 1
    assert dd.near_duplicate_ids(kept) == set()


def test_the_seed_library_has_no_duplicates(library) -> None:
    kept, removed = dd.dedup(library)
    assert removed == [] and len(kept) == 64


def test_buckets_stay_small_on_distinct_tools(library) -> None:
    """LSH compares only tools sharing a bucket: on thousands of distinct tools the candidate
    pairs are a tiny share of all N^2/2 pairs (no quadratic scan)."""
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(5000)]
    tools = []
    for index in range(3000):
        seed = library[index % len(library)]
        words = " ".join(rng.choice(vocabulary) for _ in range(12))
        tools.append(fresh(variant(seed, f"tool_{index}", description=f"Do {words}.")))
    hashes = {t.id: dd.token_hashes(t) for t in tools}
    buckets: dict[int, int] = {}
    for packed in hashes.values():
        for key in dd.band_keys(dd.signature(packed), dd.REMOVE_BANDS):
            buckets[key] = buckets.get(key, 0) + 1
    candidate_pairs = sum(n * (n - 1) // 2 for n in buckets.values())
    assert candidate_pairs < 0.001 * len(tools) ** 2 / 2
    kept, removed = dd.dedup(tools)
    assert len(kept) == 3000 and removed == []


def test_beam_dedup_matches_the_in_memory_one(library) -> None:
    base = library[5]
    pool = [*library, fresh(variant(base, base.name + "_copy")), fresh(variant(base, base.name)),
            fresh(variant(library[9], "other_name", source="mcp", drop_word=False)),
            fresh(library[3]), fresh(library[3])]  # identical copies: one id, thrice
    kept, removed = dd.dedup(pool)
    assert sum(r["id"] == library[3].id for r in removed) == 2
    assert {r["kind"] for r in removed} == {"exact", "near"}
    pipeline = in_process_pipeline()
    result = pipeline | beam.Create(pool) | Dedup()
    left = result["kept"] | "Left" >> NearDuplicateRate()
    assert_that(result["kept"] | beam.Map(lambda s: s.id), equal_to([s.id for s in kept]),
                label="Kept")
    assert_that(result["duplicates"], equal_to(removed), label="Removed")
    assert_that(left, equal_to([]), label="NoneLeft")
    pipeline.run().wait_until_finish()
