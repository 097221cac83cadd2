"""Importing real tool specs (MCP servers, OpenAI tool lists, BFCL function docs) as ToolSpecs.

Real specs are messy in known ways. Each known flaw gets a conservative repair that keeps the
tool's meaning and is recorded by name; anything else is refused with the file, the tool and the
reason, and the import goes on with the rest. After repair, every tool passes the same validation
as an authored spec (`toolspecs.load.parse_entry`). `import_specs` writes the result where the
mill reads it: specs as JSONL, refusals as Parquet Failures, and a report.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import arrow
from schemas.records import FUNCTION_NAME, Failure, ToolSpec, canonical_json
from toolspecs.load import (
    InputError,
    SpecProblem,
    _pointer,
    _slug,
    loads_json,
    parse_entry,
    read_input,
    spec_files,
)

Format = Literal["mcp", "openai", "bfcl"]
FORMATS: tuple[Format, ...] = ("mcp", "openai", "bfcl")
Status = Literal["imported", "repaired", "refused"]
STAGE = "import_toolspecs"

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_TOOL_BYTES = 256 * 1024
"""A tool's JSON above this is refused: no model prompt can carry it, and real MCP tools stay
under 60 KB (the largest in the Toucan sample is 52 KB)."""

DRAFT_07 = re.compile(r"^https?://json-schema\.org/draft-0?7/schema#?$")
DRAFT_07_ONLY = ("additionalItems", "dependencies")
"""Keywords whose meaning changed in 2020-12; a schema that uses them keeps its `$schema`."""

BFCL_TYPES = {
    "dict": "object",
    "float": "number",
    "int": "integer",
    "str": "string",
    "string": "string",
    "bool": "boolean",
    "list": "array",
    "tuple": "array",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "array": "array",
    "object": "object",
    "null": "null",
}
WRITE_VERBS = {
    "add", "append", "archive", "assign", "book", "cancel", "charge", "close", "create",
    "delete", "deploy", "disable", "enable", "execute", "insert", "install", "kill", "merge",
    "move", "order", "pay", "post", "publish", "purchase", "put", "remove", "rename", "reset",
    "restart", "run", "save", "schedule", "send", "set", "start", "stop", "submit", "transfer",
    "update", "upload", "upsert", "write",
}


@dataclass
class ImportOutcome:
    """What became of one tool entry: imported as is, repaired (and how), or refused (and why)."""

    file: str
    pointer: str
    tool: str
    status: Status
    repairs: list[str] = field(default_factory=list)
    reason: str = ""
    kind: str = ""
    """Short class of the refusal (e.g. `RecursiveRef`), for the report's counts."""
    spec: ToolSpec | None = None
    failure: Failure | None = None

    def summary(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "file": self.file, "pointer": self.pointer or "/", "tool": self.tool,
            "status": self.status,
        }
        if self.repairs:
            body["repairs"] = self.repairs
        if self.status == "refused":
            body["refusal"] = self.kind
            body["reason"] = self.reason
        return body


class Refusal(ValueError):
    """A tool that cannot be imported; `kind` classifies it, the message explains it."""

    def __init__(self, kind: str, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.pointer = pointer


# -- files and entries ------------------------------------------------------------------------


def import_paths(paths: Iterable[str | Path], fmt: Format) -> Iterator[ImportOutcome]:
    """Every tool entry under `paths` (files or folders) in format `fmt`, as an outcome."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    for path in spec_files(paths):
        yield from import_file(path, fmt)


def import_file(path: str | Path, fmt: Format) -> Iterator[ImportOutcome]:
    """One file's tools; a file that cannot be read at all is one refused outcome."""
    path = Path(path)
    try:  # a regular file of bounded size: a pipe or a device is refused, never read
        text = read_input(path, MAX_FILE_BYTES)
    except InputError as exc:
        kind = {"FileNotFoundError": "FileNotFound", "UnicodeDecodeError": "NotUTF8"}.get(
            exc.kind, exc.kind
        )
        yield _refused_file(path, kind, str(exc).removeprefix(f"{path}: "))
        return
    documents: list[tuple[str, Any]] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                documents.append((f"/{number}", loads_json(line)))
            except json.JSONDecodeError as exc:
                yield _refused_file(path, "NotJSON", f"line {number + 1} is not JSON: {exc}",
                                    pointer=f"/{number}")
            except InputError as exc:  # NaN, 1e999999, 5,000-digit integers
                yield _refused_file(path, exc.kind, f"line {number + 1}: {exc}",
                                    pointer=f"/{number}")
    else:
        try:
            documents.append(("", loads_json(text)))
        except json.JSONDecodeError as exc:
            yield _refused_file(path, "NotJSON", f"not JSON: {exc}")
            return
        except InputError as exc:
            yield _refused_file(path, exc.kind, str(exc))
            return
    default_domain = _slug(path.stem)
    for base, doc in documents:
        seen: set[str] = set()
        for where, entry, domain in _entries(doc, base, fmt, default_domain):
            outcome = import_entry(entry, fmt, str(path), where, domain)
            if outcome.spec is not None:
                # One tool list cannot offer two tools of one name; separate lists in one
                # .jsonl (MCP servers) may.
                if outcome.spec.name in seen:
                    outcome = _refused(
                        str(path), where, outcome.spec.name,
                        Refusal("DuplicateName", "name already used by another tool in this "
                                "tool list", "/name"),
                        outcome.repairs,
                    )
                else:
                    seen.add(outcome.spec.name)
            yield outcome


def _entries(doc: Any, base: str, fmt: Format, domain: str) -> Iterator[tuple[str, Any, str]]:
    """(pointer, entry, domain) of every tool entry in one JSON document."""
    if isinstance(doc, list):
        for index, entry in enumerate(doc):
            if fmt == "bfcl" and isinstance(entry, dict) and isinstance(entry.get("function"),
                                                                            list):
                yield from _entries(entry, f"{base}/{index}", fmt, domain)
            else:
                yield f"{base}/{index}", entry, domain
        return
    if isinstance(doc, dict):
        for key in ("tools", "functions", "function"):
            listed = doc.get(key)
            if isinstance(listed, list) and not (key == "function" and fmt == "openai"):
                label = doc.get("category") or doc.get("server_name")
                if fmt == "mcp" and isinstance(label, str) and label:
                    domain = _slug(label)
                for index, entry in enumerate(listed):
                    yield f"{base}/{key}/{index}", entry, domain
                return
    yield base, doc, domain


# -- one entry --------------------------------------------------------------------------------


def import_entry(
    entry: Any, fmt: Format, file: str, where: str, domain: str
) -> ImportOutcome:
    """Repair one entry conservatively and validate it as an authored spec would be."""
    repairs: list[str] = []
    name = entry.get("name", "?") if isinstance(entry, dict) else "?"
    try:
        if not isinstance(entry, dict):
            raise Refusal("NotAnObject", "a tool entry must be a JSON object")
        size = len(json.dumps(entry, ensure_ascii=False).encode())
        if size > MAX_TOOL_BYTES:
            raise Refusal("TooLarge", f"{size:,} bytes of JSON, above the {MAX_TOOL_BYTES:,} "
                          "limit for one tool")
        if entry.get("type") == "function" and isinstance(entry.get("function"), dict):
            entry = entry["function"]
            where = f"{where}/function"
            name = entry.get("name", "?")
            repairs.append("unwrapped_openai_function")
        data, key = _own_form(entry, fmt)
        name = data["name"]
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise Refusal("InvalidName", f"{name!r} is not a valid function name (letters, "
                          "digits, _ . -; starts with a letter or _; at most 64 characters)",
                          "/name")
        data["parameters"] = _repair_parameters(data.get("parameters"), key, fmt, repairs)
        if data.get("returns") is not None:
            data["returns"] = _repair_schema(data["returns"], "/returns", fmt, repairs)
        description = data.get("description")
        if not isinstance(description, str) or not description.strip():
            title = entry.get("title")
            if isinstance(title, str) and title.strip():
                data["description"] = title.strip()
                repairs.append("description_from_title")
            else:
                data["description"] = _describe_from_name(name)
                repairs.append("description_from_name")
        data["domain"] = domain
        data["source"] = fmt
        data["side_effect"] = _side_effect(entry, name)
    except Refusal as exc:
        return _refused(file, where, str(name), exc, repairs)
    result = parse_entry(data, file=file, where=where, default_domain=domain)
    if isinstance(result, Failure):
        first = result.error.splitlines()[0]
        return ImportOutcome(
            file, where, str(name), "refused", repairs, reason=result.error,
            kind=_failure_kind(result, first), failure=_with_repairs(result, repairs),
        )
    return ImportOutcome(
        file, where, result.name, "repaired" if repairs else "imported", repairs, spec=result
    )


def _own_form(entry: dict[str, Any], fmt: Format) -> tuple[dict[str, Any], str]:
    """The entry with ToolSpec's field names, and the key its parameters came from."""
    data: dict[str, Any] = {"name": entry.get("name"), "description": entry.get("description")}
    key = "parameters"
    for candidate in ("inputSchema", "input_schema", "parameters"):
        if candidate in entry:
            key = candidate
            data["parameters"] = entry[candidate]
            break
    for candidate in ("outputSchema", "output_schema", "returns"):
        if entry.get(candidate) is not None:
            data["returns"] = entry[candidate]
            break
    return data, f"/{key}"


def _repair_parameters(schema: Any, key: str, fmt: Format, repairs: list[str]) -> Any:
    if schema is None or schema == {}:
        repairs.append("empty_schema_to_object")
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise Refusal("InvalidSchema", f"the parameters schema must be an object, not "
                      f"{type(schema).__name__}", key)
    schema = _repair_schema(schema, key, fmt, repairs)
    if "type" not in schema and isinstance(schema.get("properties"), dict):
        schema = {"type": "object", **schema}
        repairs.append("object_type_added")
    return schema


def _repair_schema(schema: Any, key: str, fmt: Format, repairs: list[str]) -> Any:
    """Known, meaning-preserving fixes of one JSON Schema; refuses $refs it cannot follow."""
    if not isinstance(schema, dict):
        return schema
    schema = copy.deepcopy(schema)
    if fmt == "bfcl":
        renamed = _bfcl_types(schema)
        repairs.extend(f"bfcl_type_{old}_to_{new}" for old, new in sorted(renamed))
    if _draft04_exclusive(schema):
        repairs.append("draft04_exclusive_bounds")
    declared = schema.get("$schema")
    if isinstance(declared, str) and DRAFT_07.match(declared) and not _uses(schema,
                                                                            DRAFT_07_ONLY):
        if not any(isinstance(v, list) for v in _values_of(schema, "items")):
            del schema["$schema"]
            repairs.append("draft07_schema_key_removed")
    check_refs(schema, key)
    return schema


def _bfcl_types(node: Any) -> set[tuple[str, str]]:
    """Map BFCL's Python type names (`dict`, `float`, `tuple`, `any`...) to JSON Schema's."""
    renamed: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, str) and kind != BFCL_TYPES.get(kind, kind):
            renamed.add((kind, BFCL_TYPES[kind]))
            node["type"] = BFCL_TYPES[kind]
        elif kind == "any":
            del node["type"]
            renamed.add(("any", "untyped"))
        for key, value in node.items():
            if key in ("enum", "const", "default", "examples", "required"):
                continue
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    renamed |= _bfcl_types(sub)
            else:
                renamed |= _bfcl_types(value)
    elif isinstance(node, list):
        for item in node:
            renamed |= _bfcl_types(item)
    return renamed


def _draft04_exclusive(node: Any) -> bool:
    """Draft-04's boolean `exclusiveMinimum: true` beside `minimum` -> the numeric form."""
    changed = False
    if isinstance(node, dict):
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(node.get(exclusive), bool):
                if node[exclusive] and isinstance(node.get(bound), int | float):
                    node[exclusive] = node.pop(bound)
                else:
                    del node[exclusive]
                changed = True
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    changed |= _draft04_exclusive(sub)
            elif key not in ("enum", "const", "default", "examples"):
                changed |= _draft04_exclusive(value)
    elif isinstance(node, list):
        for item in node:
            changed |= _draft04_exclusive(item)
    return changed


def _values_of(node: Any, keyword: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == keyword:
                yield value
            yield from _values_of(value, keyword)
    elif isinstance(node, list):
        for item in node:
            yield from _values_of(item, keyword)


def _uses(schema: Any, keywords: tuple[str, ...]) -> bool:
    return any(True for k in keywords for _ in _values_of(schema, k))


def check_refs(schema: dict[str, Any], key: str = "") -> None:
    """Refuse `$ref`s that point outside the schema, to nowhere, or back into themselves.

    A recursive schema is valid JSON Schema, but a tool simulator or a constrained decoder
    would expand it forever, so it cannot be offered to a model as a tool.
    """
    acyclic: set[str] = set()

    def target(ref: str, at: str) -> Any:
        if not ref.startswith("#"):
            raise Refusal("ExternalRef", f"$ref {ref!r} points outside the schema (files and "
                          "URLs are not followed)", at)
        node: Any = schema
        for part in ref[1:].lstrip("/").split("/") if ref not in ("#", "#/") else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise Refusal("DanglingRef", f"$ref {ref!r} points to nothing", at)
        return node

    def walk(node: Any, at: str, expanding: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                if ref in expanding:
                    raise Refusal("RecursiveRef", f"$ref {ref!r} refers back into itself", at)
                if ref not in acyclic:
                    walk(target(ref, f"{at}/$ref"), f"{key}{ref[1:]}", (*expanding, ref))
                    acyclic.add(ref)
            for name, value in node.items():
                if name != "$ref":
                    walk(value, f"{at}/{_pointer([name])[1:]}", expanding)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{at}/{index}", expanding)

    walk(schema, key, ())


def _describe_from_name(name: str) -> str:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ")
    words = " ".join(words.replace(".", " ").split()).lower()
    return f"{words[:1].upper()}{words[1:]} (no description was given; inferred from the name)."


def _side_effect(entry: dict[str, Any], name: str) -> str:
    """`write` when MCP annotations say so, else when the name starts with a mutating verb."""
    hints = entry.get("annotations") if isinstance(entry.get("annotations"), dict) else {}
    if hints.get("readOnlyHint") is True:
        return "read"
    if hints.get("destructiveHint") is True or hints.get("readOnlyHint") is False:
        return "write"
    first = re.split(r"[_.\-\s]|(?<=[a-z])(?=[A-Z])", name)[0].lower()
    return "write" if first in WRITE_VERBS else "read"


def _failure_kind(failure: Failure, first: str) -> str:
    if "is not a valid function name" in first:
        return "InvalidName"
    return failure.error_type


def _with_repairs(failure: Failure, repairs: list[str]) -> Failure:
    """The loader's Failure, restaged as an import and saying which repairs came first."""
    after = f"\n(after repairs: {', '.join(repairs)})" if repairs else ""
    return Failure(
        stage=STAGE, input_id=failure.input_id, error_type=failure.error_type,
        error=failure.error + after, source=failure.source,
    )


def _refused(
    file: str, where: str, tool: str, exc: Refusal, repairs: list[str]
) -> ImportOutcome:
    problem = SpecProblem(file, tool, f"{where}{exc.pointer}", str(exc))
    failure = Failure(
        stage=STAGE, input_id=f"{file}#{where or '/'}", error_type=exc.kind, error=str(problem),
        source=f"{file}#{where or '/'} ({tool})",
    )
    return ImportOutcome(file, where, tool, "refused", list(repairs), reason=str(problem),
                         kind=exc.kind, failure=failure)


def _refused_file(path: Path, kind: str, message: str, pointer: str = "") -> ImportOutcome:
    text = f"{path}: {message}"
    failure = Failure(stage=STAGE, input_id=f"{path}#{pointer or '/'}", error_type=kind,
                      error=text, source=str(path))
    return ImportOutcome(str(path), pointer, "(file)" if not pointer else "(line)", "refused",
                         reason=text, kind=kind, failure=failure)


# -- the report -------------------------------------------------------------------------------


def report(outcomes: list[ImportOutcome], fmt: Format, inputs: list[str]) -> dict[str, Any]:
    """Counts that add up (seen = imported + repaired + refused), and every repair and refusal."""
    status = Counter(o.status for o in outcomes)
    repairs = Counter(r for o in outcomes for r in dict.fromkeys(o.repairs))
    refusals = Counter(o.kind for o in outcomes if o.status == "refused")
    domains = Counter(o.spec.domain for o in outcomes if o.spec is not None)
    counts = {
        "seen": len(outcomes),
        "imported": status["imported"],
        "repaired": status["repaired"],
        "refused": status["refused"],
    }
    return {
        "format": fmt,
        "inputs": inputs,
        "files": len({o.file for o in outcomes}),
        "counts": counts,
        "adds_up": counts["seen"] == counts["imported"] + counts["repaired"] + counts["refused"],
        "repairs": dict(repairs.most_common()),
        "refusals": dict(refusals.most_common()),
        "domains": dict(sorted(domains.items())),
        "details": [o.summary() for o in outcomes if o.status != "imported"],
    }


def import_specs(paths: list[str], fmt: Format, out: str | Path) -> dict[str, Any]:
    """Import `paths` as `fmt`: DIR/specs/<fmt>.jsonl, DIR/failures/, DIR/import_report.json."""
    out = Path(out)
    outcomes = list(import_paths(paths, fmt))
    (out / "specs").mkdir(parents=True, exist_ok=True)
    # One line per source tool list ({"tools": [...]}), so names stay unique per list as the
    # loader requires, while two MCP servers in one file may both have, say, `search`.
    lists: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.spec is not None:
            entry = outcome.pointer.removesuffix("/function")
            tool_list = (outcome.file, entry.rpartition("/")[0])
            lists[tool_list].append(outcome.spec.model_dump(mode="json"))
    with (out / "specs" / f"{fmt}.jsonl").open("w", encoding="utf-8") as handle:
        for specs in lists.values():
            handle.write(canonical_json({"tools": specs}) + "\n")
    failures = [o.failure for o in outcomes if o.failure is not None]
    (out / "failures").mkdir(exist_ok=True)
    for old in (out / "failures").glob("*.parquet"):
        old.unlink()
    pq.write_table(
        pa.Table.from_pylist([arrow.to_row(f) for f in failures], schema=arrow.FAILURE_SCHEMA),
        out / "failures" / "part-00000-of-00001.parquet",
    )
    summary = report(outcomes, fmt, [str(p) for p in paths])
    (out / "import_report.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False)
                                            + "\n", encoding="utf-8")
    return summary
