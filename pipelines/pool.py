"""The tool pool: domain evolution with dedup as a Beam pipeline (importing real specs is plain
Python: `toolspecs.importers.import_specs`).

`run_synth` builds a pool: seeds -> new domains -> evolved tools -> exact and near-duplicate
removal -> Parquet and JSONL, then a report read back from what landed. Every stage is a Beam
transform, so the same pipeline runs in process here and on Dataflow; model calls run
concurrently through `AsyncBatchFn`, like the mill's other stages.

Output of `agentmill toolspecs synth --out DIR`:

    DIR/toolspecs/    the kept pool, Parquet (the mill's ToolSpec columns)
    DIR/specs/        the same tools as JSONL in the project's own form (`--tool-specs DIR/specs`)
    DIR/domains/      the taxonomy's domains (JSONL), DIR/lineage/ seeds and operators per tool
    DIR/duplicates/   removed tools: exact or near, of which kept tool, similarity (JSONL)
    DIR/failures/     synthesized specs that failed validation or the model, Parquet
    DIR/pool_report.json  counts that reconcile, domains, tools per domain, near-duplicate rate
    DIR/taxonomy.json     categories -> domains -> tool names
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
from pydantic import BaseModel, ConfigDict, Field

from pipelines import runtime
from pipelines.batching import FAILURES, AsyncBatchFn, Handled, failure_from, usage_kept
from pipelines.parquet_io import WriteRecords, read_column
from pipelines.shared import (
    LoadToolSpecs,
    fixed_batches,
    in_process_pipeline,
    pipeline_metrics,
    stable_seed,
)
from schemas import arrow
from schemas.records import Failure, TokenCount, ToolSpec, canonical_json
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from toolspecs import dedup as dd
from toolspecs.load import LIBRARY
from toolspecs.synth import (
    Domain,
    category_of,
    chains_by_domain,
    evolve_tool,
    grow_domain,
    plan_tool,
    seed_domains,
)

# -- synthesis --------------------------------------------------------------------------------


class PoolConfig(BaseModel):
    """Everything a pool build needs; the same config and model answers give the same pool."""

    model_config = ConfigDict(extra="forbid")

    out: str = "runs/pool"
    target: int = Field(default=200, ge=1, description="Tools to synthesize (before dedup).")
    seed: int = 0
    seeds: list[str] = Field(
        default_factory=list, description="Seed spec files or folders; empty: the library."
    )
    tools_per_domain: int = Field(
        default=25, ge=1, description="New domains grown: ceil(target / tools_per_domain)."
    )
    near_threshold: float = Field(default=dd.NEAR_THRESHOLD, gt=0.0, le=1.0)
    synthesizer: ModelConfig = ModelConfig()
    sampling: Sampling = Sampling(temperature=0.9, max_tokens=320)
    attempts: int = Field(default=3, ge=1)
    batch_size: int = Field(default=64, ge=1)
    in_flight: int = Field(default=512, ge=1)

    def new_domains(self) -> int:
        return math.ceil(self.target / self.tools_per_domain)


class _GrowDomainFn(AsyncBatchFn):
    stage = "domains"

    def __init__(self, config: PoolConfig) -> None:
        super().__init__(config.new_domains(), config.in_flight)
        self.config = config

    def process(self, batch: Iterable[int], seeds: list[ToolSpec]) -> Iterator[Any]:  # type: ignore[override]
        self._seeds = seeds
        yield from super().process(batch)

    async def handle(self, slot: int) -> Handled:
        cfg = self.config
        usage: dict[str, TokenCount] = {}
        sampling = cfg.sampling.model_copy(update={"seed": stable_seed(cfg.seed, "domain", slot)})
        with usage_kept(usage):
            domain = await grow_domain(runtime.model(cfg.synthesizer), slot, cfg.seed,
                                       self._seeds, sampling, usage, cfg.attempts)
        return [domain], usage

    def note(self, outputs: list[Any]) -> str:
        return f"{outputs[0].category} / {outputs[0].name}"

    def failure(self, slot: int, error: BaseException) -> Failure:
        return failure_from(self.stage, f"domain-slot-{slot}", error)


def taxonomy_domains(seeds: list[ToolSpec], grown: list[Domain]) -> list[Domain]:
    """Seed domains and grown ones, one per name (the earliest slot wins), sorted by name."""
    chosen: dict[str, Domain] = {d.name: d for d in seed_domains(seeds)}
    for domain in sorted(grown, key=lambda d: d.slot):
        chosen.setdefault(domain.name, domain)
    return [chosen[name] for name in sorted(chosen)]


class _EvolveToolFn(AsyncBatchFn):
    stage = "synthesize"

    def __init__(self, config: PoolConfig) -> None:
        super().__init__(config.target, config.in_flight)
        self.config = config
        self._key: tuple[int, int] | None = None

    def process(  # type: ignore[override]
        self, batch: Iterable[int], seeds: list[ToolSpec], grown: list[Domain]
    ) -> Iterator[Any]:
        key = (len(seeds), len(grown))
        if key != self._key:  # side inputs are fixed for a run: index them once per worker
            self._key = key
            self._domains = taxonomy_domains(seeds, grown)
            self._by_domain: dict[str, list[ToolSpec]] = defaultdict(list)
            for spec in sorted(seeds, key=lambda s: s.id):
                self._by_domain[spec.domain].append(spec)
            self._chains = chains_by_domain(seeds)
        yield from super().process(batch)

    async def handle(self, slot: int) -> Handled:
        cfg = self.config
        usage: dict[str, TokenCount] = {}
        plan = plan_tool(slot, cfg.seed, self._domains, self._by_domain, self._chains)
        sampling = cfg.sampling.model_copy(update={"seed": stable_seed(cfg.seed, "tool", slot)})
        with usage_kept(usage):
            result, lineage = await evolve_tool(runtime.model(cfg.synthesizer), plan, sampling,
                                                usage, cfg.attempts, cfg.seed)
        if isinstance(result, Failure):
            return [beam.pvalue.TaggedOutput(FAILURES, result)], usage
        return [result, beam.pvalue.TaggedOutput("lineage", lineage)], usage

    def note(self, outputs: list[Any]) -> str:
        first = outputs[0]
        if isinstance(first, ToolSpec):
            return f"{first.domain} / {first.name}"
        return f"invalid: {first.value.error_type}"

    def failure(self, slot: int, error: BaseException) -> Failure:
        return failure_from(self.stage, f"tool-slot-{slot}", error)


Compact = tuple[str, int, bytes]
"""(id, source rank, packed token hashes): what dedup shuffles instead of whole specs."""


def _compact(spec: ToolSpec) -> Compact:
    return spec.id, dd.rank(spec)[0], dd.token_hashes(spec)


class NearPairs(beam.PTransform):
    """Compact tools -> (worse id, (better id, similarity)) for every confirmed near-duplicate.

    Buckets hold only (rank, id); candidate pairs are then confirmed by exact Jaccard after two
    joins that bring each side's token hashes, so no shuffle carries a tool per band.
    """

    def __init__(self, bands: int, threshold: float) -> None:
        super().__init__()
        self.bands, self.threshold = bands, threshold

    def expand(self, compact: Any) -> Any:
        bands, threshold = self.bands, self.threshold

        def to_buckets(item: Compact) -> Iterator[tuple[int, dd.Member]]:
            tool_id, rank, hashes = item
            for key in dd.band_keys(dd.signature(hashes), bands):
                yield key, (rank, tool_id)

        def candidates(element: tuple[int, Iterable[dd.Member]]) -> Iterator[tuple[str, str]]:
            members = list(element[1])
            if len(members) > 1:
                yield from dd.bucket_pairs(members)

        pairs = (
            compact
            | "Buckets" >> beam.FlatMap(to_buckets)
            | "GroupBuckets" >> beam.GroupByKey()
            | "Candidates" >> beam.FlatMap(candidates)
            | "DistinctPairs" >> beam.Distinct()
        )
        hashes = compact | "KeyHashes" >> beam.Map(lambda c: (c[0], c[2]))

        def with_better(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
            better, grouped = element
            for packed in grouped["hashes"][:1]:
                for worse in grouped["worse"]:
                    yield worse, (better, packed)

        def confirm(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
            worse, grouped = element
            for packed in grouped["hashes"][:1]:
                for better, better_hashes in grouped["better"]:
                    similarity = dd.jaccard(packed, better_hashes)
                    if similarity >= threshold:
                        yield worse, (better, round(similarity, 4))

        sided = (
            {"hashes": hashes, "worse": pairs}
            | "JoinBetter" >> beam.CoGroupByKey()
            | "WithBetter" >> beam.FlatMap(with_better)
        )
        return (
            {"hashes": hashes, "better": sided}
            | "JoinWorse" >> beam.CoGroupByKey()
            | "Confirm" >> beam.FlatMap(confirm)
        )


class _DropRemoved(beam.DoFn):
    """Specs pass unless their id is in the side input of removed ids; those become records."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def process(self, spec: ToolSpec, removed: dict[str, tuple[str, float]]) -> Iterator[Any]:
        reason = removed.get(spec.id)
        if reason is None:
            yield spec
        else:
            record = dd.duplicate_record(spec, reason[0], self.kind, reason[1])
            yield beam.pvalue.TaggedOutput("duplicates", record)


class Dedup(beam.PTransform):
    """ToolSpecs -> kept ToolSpecs (`kept`) and one record per removed tool (`duplicates`).

    Exact: one tool per id (identical content; the only shuffle of whole specs), then one per
    name (a GroupByKey over (rank, id) only). Near: MinHash LSH (`NearPairs`) on the survivors,
    the worse of each confirmed pair removed. Removed ids reach the filters as side inputs,
    sized by the duplicates.
    """

    def __init__(self, threshold: float = dd.NEAR_THRESHOLD) -> None:
        super().__init__()
        self.threshold = threshold

    def expand(self, specs: Any) -> Any:
        def losers(element: tuple[str, Iterable[dd.Member]]) -> Iterator[Any]:
            ranked = sorted(set(element[1]))
            for _, tool_id in ranked[1:]:
                yield tool_id, (ranked[0][1], 1.0)

        def one_per_id(element: tuple[str, Iterable[ToolSpec]]) -> Iterator[Any]:
            first, *copies = element[1]
            yield first
            for copy in copies:
                record = dd.duplicate_record(copy, first.id, "exact", 1.0)
                yield beam.pvalue.TaggedOutput("duplicates", record)

        identical = (
            specs
            | "KeyById" >> beam.Map(lambda s: (s.id, s))
            | "GroupById" >> beam.GroupByKey()
            | "OnePerId" >> beam.FlatMap(one_per_id).with_outputs("duplicates", main="kept")
        )
        specs = identical.kept
        exact = (
            specs
            | "KeyByName" >> beam.Map(lambda s: (s.name.lower(), (dd.rank(s)[0], s.id)))
            | "GroupByName" >> beam.GroupByKey()
            | "SameName" >> beam.FlatMap(losers)
        )
        named = specs | "DropExact" >> beam.ParDo(
            _DropRemoved("exact"), beam.pvalue.AsDict(exact)
        ).with_outputs("duplicates", main="kept")
        near = (
            named.kept
            | "Compact" >> beam.Map(_compact)
            | "NearPairs" >> NearPairs(dd.REMOVE_BANDS, self.threshold)
            | "GroupNear" >> beam.GroupByKey()
            | "BestReason" >> beam.Map(lambda kv: (kv[0], min(kv[1])))
        )
        joined = named.kept | "DropNear" >> beam.ParDo(
            _DropRemoved("near"), beam.pvalue.AsDict(near)
        ).with_outputs("duplicates", main="kept")
        duplicates = (
            (identical.duplicates, named.duplicates, joined.duplicates)
            | "AllDuplicates" >> beam.Flatten()
        )
        return {"kept": joined.kept, "duplicates": duplicates}


class NearDuplicateRate(beam.PTransform):
    """Kept ToolSpecs -> ids that still have a near-duplicate in the pool (higher-recall LSH)."""

    def __init__(self, threshold: float = dd.NEAR_THRESHOLD) -> None:
        super().__init__()
        self.threshold = threshold

    def expand(self, specs: Any) -> Any:
        return (
            specs
            | "Compact" >> beam.Map(_compact)
            | "MeasurePairs" >> NearPairs(dd.MEASURE_BANDS, self.threshold)
            | "Involved" >> beam.FlatMap(lambda pair: (pair[0], pair[1][0]))
            | "DistinctInvolved" >> beam.Distinct()
        )


class WriteJsonLines(beam.PTransform):
    """Records -> `<folder>/part-SSSSS-of-NNNNN.jsonl`, written as they come (no single shard)."""

    def __init__(self, folder: str, to_json: Any) -> None:
        super().__init__()
        self.folder, self.to_json = folder, to_json

    def expand(self, records: Any) -> Any:
        return (
            records
            | "ToJson" >> beam.Map(self.to_json)
            | "Write" >> beam.io.WriteToText(f"{self.folder}/part", file_name_suffix=".jsonl",
                                             shard_name_template="-SSSSS-of-NNNNN")
        )


def _spec_json(spec: ToolSpec) -> str:
    return canonical_json(spec.model_dump(mode="json"))


def build(pipeline: beam.Pipeline, config: PoolConfig) -> None:
    """Add the pool stages to `pipeline`, writing under `config.out`."""
    out = config.out.rstrip("/")
    loaded = pipeline | "LoadSeeds" >> LoadToolSpecs(config.seeds or [str(LIBRARY)])
    seeds = loaded.specs
    grown = (
        pipeline
        | "DomainSlots" >> beam.Create(list(range(config.new_domains())))
        | "BatchDomainSlots" >> fixed_batches(config.batch_size)
        | "GrowDomains" >> beam.ParDo(_GrowDomainFn(config), beam.pvalue.AsList(seeds))
        .with_outputs(FAILURES, main="domains")
    )
    evolved = (
        pipeline
        | "ToolSlots" >> beam.Create(list(range(config.target)))
        | "BatchToolSlots" >> fixed_batches(config.batch_size)
        | "Evolve" >> beam.ParDo(_EvolveToolFn(config), beam.pvalue.AsList(seeds),
                                 beam.pvalue.AsList(grown.domains))
        .with_outputs(FAILURES, "lineage", main="tools")
    )
    pool = (seeds, evolved.tools) | "Pool" >> beam.Flatten()
    deduped = pool | "Dedup" >> Dedup(config.near_threshold)
    kept = deduped["kept"]
    remaining = kept | "NearDuplicates" >> NearDuplicateRate(config.near_threshold)
    failures = (loaded.failures, grown.failures, evolved.failures) | "Failures" >> beam.Flatten()

    _ = kept | "WritePool" >> WriteRecords(f"{out}/toolspecs", arrow.TOOLSPEC_SCHEMA, arrow.to_row)
    _ = kept | "WriteSpecs" >> WriteJsonLines(f"{out}/specs", _spec_json)
    _ = grown.domains | "WriteDomains" >> WriteJsonLines(
        f"{out}/domains", lambda d: canonical_json(d.model_dump(mode="json")))
    _ = evolved.lineage | "WriteLineage" >> WriteJsonLines(f"{out}/lineage", canonical_json)
    _ = deduped["duplicates"] | "WriteDuplicates" >> WriteJsonLines(
        f"{out}/duplicates", canonical_json)
    _ = remaining | "WriteRemaining" >> WriteJsonLines(f"{out}/near_duplicates_left", str)
    _ = failures | "WriteFailures" >> WriteRecords(
        f"{out}/failures", arrow.FAILURE_SCHEMA, arrow.to_row
    )
    _ = (
        seeds
        | "CountSeeds" >> beam.combiners.Count.Globally()
        | "WriteSeedCount" >> WriteJsonLines(f"{out}/counts", lambda n: json.dumps({"seeds": n}))
    )


OUTPUTS = ("toolspecs", "specs", "domains", "lineage", "duplicates", "near_duplicates_left",
           "failures", "counts")


def run_synth(config: PoolConfig, pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Build the pool for `config` and return the report it wrote."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*OUTPUTS, "pool_report.json", "taxonomy.json"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    started = time.time()
    print(f"agentmill: pool of {config.target} synthesized tools -> {out}", file=sys.stderr,
          flush=True)
    pipeline = pipeline or in_process_pipeline()
    build(pipeline, config)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        runtime.close_models()
    summary = pool_report(config, out, time.time() - started, result)
    (out / "pool_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _json_lines(folder: Path) -> Iterator[dict[str, Any]]:
    for file in sorted(folder.glob("*.jsonl")):
        with file.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def pool_report(
    config: PoolConfig, out: Path, seconds: float, result: Any = None
) -> dict[str, Any]:
    """The pool's numbers, read back from disk; also writes taxonomy.json."""
    domains_col = read_column(out / "toolspecs", "domain")
    sources = Counter(read_column(out / "toolspecs", "source"))
    names = read_column(out / "toolspecs", "name")
    failure_stages = Counter(read_column(out / "failures", "stage"))
    failure_types = Counter(
        f"{s}:{t}" for s, t in zip(read_column(out / "failures", "stage"),
                                   read_column(out / "failures", "error_type"), strict=True)
    )
    duplicates = Counter(d["kind"] for d in _json_lines(out / "duplicates"))
    operators: Counter[str] = Counter()
    synthesized = 0
    for lineage in _json_lines(out / "lineage"):
        operators["+".join(step["op"] for step in lineage["operators"])] += 1
        synthesized += 1
    grown = list(_json_lines(out / "domains"))
    left = sum(1 for file in (out / "near_duplicates_left").glob("*.jsonl")
               for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
    kept = len(domains_col)
    seeds_in = sum(c["seeds"] for c in _json_lines(out / "counts"))
    per_domain = Counter(domains_col)
    category = {d["name"]: d["category"] for d in sorted(grown, key=lambda d: -d["slot"])}
    taxonomy: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for domain, name in zip(domains_col, names, strict=True):
        taxonomy[category.get(domain, category_of(domain))][domain].append(name)
    (out / "taxonomy.json").write_text(json.dumps(
        {c: {d: sorted(t) for d, t in sorted(ds.items())} for c, ds in sorted(taxonomy.items())},
        indent=2) + "\n")
    counts_tools = sorted(per_domain.values())
    tokens, _ = pipeline_metrics(result)
    reconcile = {
        "slots": config.target,
        "synthesized_valid": synthesized,
        "synthesis_failures": failure_stages.get("synthesize", 0),
        "ok": config.target == synthesized + failure_stages.get("synthesize", 0)
        and seeds_in + synthesized == kept + sum(duplicates.values()),
    }
    return {
        "target": config.target,
        "seed": config.seed,
        "seconds": round(seconds, 1),
        "tools_per_second": round(config.target / seconds, 1) if seconds else None,
        "pool": {
            "seeds": seeds_in,
            "synthesized": synthesized,
            "exact_duplicates_removed": duplicates.get("exact", 0),
            "near_duplicates_removed": duplicates.get("near", 0),
            "kept": kept,
            "kept_by_source": dict(sorted(sources.items())),
        },
        "reconcile": reconcile,
        "failures_by_type": dict(sorted(failure_types.items())),
        "domains": {
            "count": len(per_domain),
            "categories": len(taxonomy),
            "grown": len({d["name"] for d in grown}),
            "growth_slots": config.new_domains(),
            "growth_failures": failure_stages.get("domains", 0),
        },
        "tools_per_domain": {
            "min": counts_tools[0] if counts_tools else 0,
            "median": statistics.median(counts_tools) if counts_tools else 0,
            "max": counts_tools[-1] if counts_tools else 0,
            "by_domain": dict(sorted(per_domain.items())),
        },
        "near_duplicates": {
            "threshold": config.near_threshold,
            "kept_with_a_near_duplicate": left,
            "rate": round(left / kept, 4) if kept else 0.0,
        },
        "operators": dict(operators.most_common()),
        "tokens": tokens,
    }
