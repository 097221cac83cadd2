"""Exact and near-duplicate tools: same name, or near-identical description and parameters.

Near-duplicates are found with MinHash signatures and locality-sensitive hashing (bands of the
signature as bucket keys), so only tools that share a bucket are compared: the work grows with
the pool, not with its square. Candidates are confirmed by the exact Jaccard similarity of their
token sets. Of two duplicates the better-ranked one stays (authored, then imported, then
synthetic; then the smaller id), so the outcome does not depend on input order. The functions
here are plain Python; `pipelines.pool` runs the same steps as Beam transforms.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from schemas.records import ToolSpec

NEAR_THRESHOLD = 0.8
PERMUTATIONS = 64
REMOVE_BANDS = 16
"""16 bands of 4 rows: pairs at Jaccard 0.8 share a bucket with probability 0.9998."""
MEASURE_BANDS = 21
"""21 bands of 3 rows for measuring what is left: higher recall (0.8 -> 1 - 3e-7, 0.6 -> 0.99)
at the price of more candidate pairs, each checked exactly."""
MAX_BUCKET = 500
"""A bucket above this is compared only within its first MAX_BUCKET members (by rank)."""
SOURCE_RANK = {"authored": 0, "mcp": 1, "openai": 1, "bfcl": 1, "synthetic": 2}
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or that the this to with "
    "returns return given".split()
)
_PRIME = (1 << 31) - 1
_rng = np.random.default_rng(20240611)
_A = _rng.integers(1, _PRIME, size=PERMUTATIONS, dtype=np.uint64)
_B = _rng.integers(0, _PRIME, size=PERMUTATIONS, dtype=np.uint64)


def rank(spec: ToolSpec) -> tuple[int, str]:
    """Which of two duplicates stays: the smaller rank."""
    return SOURCE_RANK.get(spec.source, 3), spec.id


def _words(text: str) -> list[str]:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    # Latin words, and single CJK characters (whose pairs then act as words).
    found = re.findall(r"[^\W_]+", text.lower())
    words: list[str] = []
    for word in found:
        if re.search(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]", word):
            words.extend(word)
        elif len(word) > 1 and word not in STOPWORDS:
            words.append(word)
    return words


def tokens(spec: ToolSpec) -> frozenset[str]:
    """What a tool is made of: name words, description words and word pairs, arguments with
    their types, result fields."""
    found = {f"n:{w}" for w in _words(spec.name)}
    words = _words(spec.description)
    found |= {f"d:{w}" for w in words}
    found |= {f"d:{a}_{b}" for a, b in itertools.pairwise(words)}
    for name, sub in (spec.parameters.get("properties") or {}).items():
        kind = sub.get("type") if isinstance(sub, dict) else None
        found.add(f"p:{name}:{kind if isinstance(kind, str) else 'any'}")
    returns = spec.returns if isinstance(spec.returns, dict) else {}
    found |= {f"r:{name}" for name in returns.get("properties") or {}}
    return frozenset(found)


def token_hashes(spec: ToolSpec) -> bytes:
    """The tool's tokens as sorted 32-bit hashes, packed: ~4 bytes a token, cheap to shuffle."""
    values = sorted({_hash64(t) & 0xFFFFFFFF for t in tokens(spec)})
    return np.array(values, dtype=np.uint32).tobytes()


def _hash64(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")


def signature(hashes: bytes) -> tuple[int, ...]:
    """MinHash signature: per permutation, the least (a*h + b) mod p over the token hashes."""
    values = np.frombuffer(hashes, dtype=np.uint32).astype(np.uint64) % _PRIME
    if not len(values):
        values = np.zeros(1, dtype=np.uint64)
    # 31-bit values: a * h + b stays below 2**63, so uint64 arithmetic is exact.
    mixed = (np.outer(values, _A) + _B) % _PRIME
    return tuple(int(v) for v in mixed.min(axis=0))


def band_keys(sig: Sequence[int], bands: int) -> list[int]:
    """One bucket key per band of `sig`; tools sharing a key are candidates."""
    rows = len(sig) // bands
    return [
        int.from_bytes(hashlib.blake2b(repr((b, sig[b * rows:(b + 1) * rows])).encode(),
                                       digest_size=8).digest(), "little")
        for b in range(bands)
    ]


def jaccard(a: bytes, b: bytes) -> float:
    """Jaccard similarity of two packed token-hash sets."""
    left = np.frombuffer(a, dtype=np.uint32)
    right = np.frombuffer(b, dtype=np.uint32)
    union = len(np.union1d(left, right))
    return len(np.intersect1d(left, right, assume_unique=True)) / union if union else 1.0


Member = tuple[int, str]
"""(source rank, id) of a tool inside one bucket: all a bucket needs to hold."""


def bucket_pairs(members: Iterable[Member]) -> Iterator[tuple[str, str]]:
    """(better id, worse id) for every candidate pair in one bucket (its first MAX_BUCKET)."""
    ordered = sorted(set(members))[:MAX_BUCKET]
    for i, (_, better) in enumerate(ordered):
        for _, worse in ordered[i + 1:]:
            yield better, worse


def near_pairs(
    hashes: dict[str, bytes], ranks: dict[str, int], bands: int,
    threshold: float = NEAR_THRESHOLD,
) -> Iterator[tuple[str, str, float]]:
    """(worse id, better id, similarity) of every confirmed near-duplicate pair."""
    buckets: dict[int, list[Member]] = {}
    for tool_id, packed in hashes.items():
        for key in band_keys(signature(packed), bands):
            buckets.setdefault(key, []).append((ranks[tool_id], tool_id))
    candidates = {pair for members in buckets.values() if len(members) > 1
                  for pair in bucket_pairs(members)}
    for better, worse in sorted(candidates):
        similarity = jaccard(hashes[better], hashes[worse])
        if similarity >= threshold:
            yield worse, better, round(similarity, 4)


def dedup(
    specs: Sequence[ToolSpec], threshold: float = NEAR_THRESHOLD
) -> tuple[list[ToolSpec], list[dict[str, Any]]]:
    """(kept tools, one record per removed tool): the in-memory form of the Beam pipeline."""
    kept_by_name: dict[str, ToolSpec] = {}
    removed: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in sorted(specs, key=rank):
        if spec.id in seen:  # an identical copy
            removed.append(duplicate_record(spec, spec.id, "exact", 1.0))
            continue
        seen.add(spec.id)
        other = kept_by_name.get(spec.name.lower())
        if other is not None:
            removed.append(duplicate_record(spec, other.id, "exact", 1.0))
        else:
            kept_by_name[spec.name.lower()] = spec
    survivors = list(kept_by_name.values())
    hashes = {s.id: token_hashes(s) for s in survivors}
    ranks = {s.id: rank(s)[0] for s in survivors}
    best: dict[str, tuple[str, float]] = {}
    for worse, better, similarity in near_pairs(hashes, ranks, REMOVE_BANDS, threshold):
        best[worse] = min(best.get(worse, (better, similarity)), (better, similarity))
    by_id = {s.id: s for s in survivors}
    for worse, (better, similarity) in sorted(best.items()):
        removed.append(duplicate_record(by_id[worse], better, "near", similarity))
    return [s for s in survivors if s.id not in best], removed


def near_duplicate_ids(
    specs: Sequence[ToolSpec], threshold: float = NEAR_THRESHOLD
) -> set[str]:
    """Tools of `specs` that have a near-duplicate among them (higher-recall banding)."""
    hashes = {s.id: token_hashes(s) for s in specs}
    ranks = {s.id: rank(s)[0] for s in specs}
    found: set[str] = set()
    for worse, better, _ in near_pairs(hashes, ranks, MEASURE_BANDS, threshold):
        found |= {worse, better}
    return found


def duplicate_record(spec: ToolSpec, kept_id: str, kind: str, similarity: float) -> dict[str, Any]:
    return {
        "id": spec.id,
        "name": spec.name,
        "domain": spec.domain,
        "source": spec.source,
        "kind": kind,
        "duplicate_of": kept_id,
        "similarity": similarity,
    }
