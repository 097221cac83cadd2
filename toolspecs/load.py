"""Reading tool specs from JSON files in the project's own, MCP and OpenAI forms.

Every entry ends as a `ToolSpec` or a `Failure` that names the file, the tool and the JSON pointer
of each problem; one bad entry never stops the rest of its file, nor a bad file the rest of a run.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.validators import validator_for
from pydantic import ValidationError

from schemas.records import Failure, ToolSpec

LIBRARY = Path(__file__).parent / "library"
SPEC_SUFFIXES = (".json", ".jsonl")
STAGE = "load_toolspecs"
MAX_SPEC_CHARS = 200_000
"""A tool's spec as JSON text may be this long (the largest of 2,915 real MCP tools is ~53 KB);
a larger one would not fit a prompt, and validating it takes seconds."""
MAX_SPEC_DEPTH = 64
"""JSON nesting a tool's spec may have (real MCP tools reach 17); deeper ones would exhaust
Python's recursion in schema validation."""


MAX_FILE_BYTES = 256 * 1024 * 1024
"""An input file (spec, domain file, config) may be this large; the 1,060 shared MCP servers
take 2.3 MB."""
MAX_INT_DIGITS = 300
"""Digits an integer literal in an input may have: beyond a float's range no JSON reader that
uses doubles agrees on its value, and 4,300 digits is where Python refuses to parse one."""


class InputError(ValueError):
    """An input file that cannot be read as data; `kind` names the reason (the Failure's
    error_type), the message names the file."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
)


def read_input(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of an input file, refusing what is not a regular file (a pipe or a device
    would block or never end) or is larger than `limit`; InputError names the file and why."""
    try:
        info = os.stat(path)  # follows links: a link to /dev/zero is a device
    except FileNotFoundError:
        raise InputError("FileNotFoundError", f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(type(exc).__name__, f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a file")
        raise InputError("NotARegularFile", f"{path}: is {kind}, not a regular file; refused")
    if info.st_size > limit:
        raise InputError("FileTooLarge", f"{path}: {info.st_size:,} bytes, more than {limit:,}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never wait on a swapped-in pipe
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InputError(type(exc).__name__, f"{path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError("FileTooLarge", f"{path}: more than {limit:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("UnicodeDecodeError", f"{path}: not UTF-8: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise InputError("NotStandardJSON", f"{name} is not standard JSON (no reader agrees on it)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError("NotStandardJSON", f"number {text[:40]} is beyond a float's range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InputError(
            "NumberTooLong", f"an integer of {len(text.lstrip('-')):,} digits (more than "
            f"{MAX_INT_DIGITS})"
        )
    return int(text)


def loads_json(text: str) -> Any:
    """`json.loads` for inputs: NaN, Infinity, numbers beyond a float's range and integers of
    more than MAX_INT_DIGITS digits raise InputError instead of passing as non-standard JSON
    (or, at 4,300 digits, a bare ValueError)."""
    return json.loads(
        text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int
    )


@dataclass(frozen=True)
class SpecProblem:
    """One reason a spec was refused: where it is and what is wrong."""

    file: str
    tool: str
    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: tool {self.tool!r} at {self.pointer or '/'}: {self.message}"


def spec_files(paths: Iterable[str | Path]) -> list[Path]:
    """Spec files under `paths` (files as given, folders searched recursively), sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.suffix in SPEC_SUFFIXES)
        else:
            found.append(path)
    return found


def load_file(path: str | Path) -> Iterator[ToolSpec | Failure]:
    """Every tool of one file, as a ToolSpec or a Failure; never raises for bad content."""
    path = Path(path)
    try:
        text = read_input(path)
    except InputError as exc:
        yield _file_failure(path, exc.kind, str(exc).removeprefix(f"{path}: "))
        return
    try:
        documents = _documents(path, text)
    except json.JSONDecodeError as exc:
        yield _file_failure(path, "JSONDecodeError", f"not JSON: {exc}")
        return
    except InputError as exc:
        yield _file_failure(path, exc.kind, str(exc))
        return
    except RecursionError:
        yield _file_failure(path, "SpecTooDeep", "JSON nested too deeply to read")
        return
    default_domain = _slug(path.stem)
    seen: set[tuple[str, str]] = set()
    for where, entry, domain in _entries(documents, default_domain):
        result = parse_entry(entry, file=str(path), where=where, default_domain=domain)
        if isinstance(result, ToolSpec):
            # Names must be unique within one tool list; servers in one .jsonl may share names.
            key = (where.rpartition("/tools/")[0], result.name)
            if key in seen:
                at = f"{where}/function/name" if _is_openai(entry) else f"{where}/name"
                result = _failure(
                    str(path), where, result.name, "DuplicateToolName",
                    [SpecProblem(str(path), result.name, at,
                                 "name already used by another tool in this file")],
                )
            else:
                seen.add(key)
        yield result


def load_paths(paths: Iterable[str | Path]) -> Iterator[ToolSpec | Failure]:
    for path in spec_files(paths):
        yield from load_file(path)


def load_library() -> list[ToolSpec]:
    """The hand-authored seed library; a broken library spec is a bug, so this raises."""
    specs: list[ToolSpec] = []
    for item in load_paths([LIBRARY]):
        if isinstance(item, Failure):
            raise ValueError(f"seed library spec is invalid: {item.source}: {item.error}")
        specs.append(item)
    return specs


def parse_entry(
    entry: Any, file: str, where: str, default_domain: str = "general"
) -> ToolSpec | Failure:
    """One spec in any supported form, validated, or the Failure that says why not."""
    name = entry.get("name", "?") if isinstance(entry, dict) else "?"
    openai = _is_openai(entry)
    if openai:
        where, entry = f"{where}/function", entry["function"]
        name = entry.get("name", "?") if isinstance(entry, dict) else "?"
    if not isinstance(entry, dict):
        problem = SpecProblem(file, str(name), where, "a tool spec must be a JSON object")
        return _failure(file, where, str(name), "InvalidSpec", [problem])
    limit = _limit_problem(entry)
    if limit is not None:
        kind, message = limit
        problem = SpecProblem(file, str(name), where, message)
        return _failure(file, where, str(name), kind, [problem])
    data, source = _normalize(entry, default_domain)
    source = "openai" if openai else source
    problems = [
        SpecProblem(file, str(name), f"{where}{pointer}", message)
        for pointer, message in _schema_problems(data)
    ]
    if problems:
        return _failure(file, where, str(name), "InvalidSchema", problems)
    try:
        spec = ToolSpec.model_validate({**data, "source": data.get("source", source)})
    except ValidationError as exc:
        problems = [
            SpecProblem(file, str(name), where + _pointer(err["loc"]), err["msg"])
            for err in exc.errors()
        ]
        return _failure(file, where, str(name), "InvalidSpec", problems)
    return spec


def _limit_problem(entry: dict[str, Any]) -> tuple[str, str] | None:
    """("SpecTooDeep" | "SpecTooLarge", message) when `entry` passes a size limit, else None.

    Walks iteratively, so a hostile depth cannot exhaust the stack here either.
    """
    deepest, stack = 0, [(entry, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_SPEC_DEPTH:
            return "SpecTooDeep", f"nested more than {MAX_SPEC_DEPTH} levels deep"
        if isinstance(value, dict):
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)
    size = len(json.dumps(entry, ensure_ascii=False))
    if size > MAX_SPEC_CHARS:
        return "SpecTooLarge", f"{size:,} characters of JSON, more than {MAX_SPEC_CHARS:,}"
    return None


def check_parameters_schema(schema: Any) -> list[tuple[str, str]]:
    """Problems with a parameters schema as (pointer below it, message); empty when valid."""
    if not isinstance(schema, dict):
        return [("", "must be a JSON Schema object")]
    problems = _meta_problems(schema)
    if problems:
        return problems
    if schema.get("type", "object") != "object":
        return [("/type", f"arguments must be an object schema, not {schema.get('type')!r}")]
    return []


def _remote_refs(schema: Any, pointer: str = "") -> list[tuple[str, str]]:
    """`$ref`s that point outside the schema: refused, since nothing is ever fetched."""
    problems: list[tuple[str, str]] = []
    stack = [(schema, pointer)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                here = f"{at}/{_pointer([key])[1:]}"
                if key in ("$ref", "$dynamicRef") and isinstance(child, str) and not (
                    child.startswith("#")
                ):
                    problems.append((here, f"{child!r} points outside the schema; only local "
                                           "references ('#/...') are allowed, nothing is fetched"))
                else:
                    stack.append((child, here))
        elif isinstance(value, list):
            stack.extend((child, f"{at}/{index}") for index, child in enumerate(value))
    return sorted(problems)


def _schema_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for key in ("parameters", "returns"):
        problems += _remote_refs(data.get(key), f"/{key}")
    if problems:
        return problems
    if "parameters" in data:
        problems += [(f"/parameters{p}", m) for p, m in check_parameters_schema(data["parameters"])]
    returns = data.get("returns")
    if returns is not None:
        if not isinstance(returns, dict):
            problems.append(("/returns", "must be a JSON Schema object"))
        else:
            problems += [(f"/returns{p}", m) for p, m in _meta_problems(returns)]
    return problems


def _meta_problems(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Errors of `schema` against its meta-schema (draft-07 if it says so, else 2020-12)."""
    default = jsonschema.Draft202012Validator
    declared = schema.get("$schema")
    cls = validator_for(schema, default=default) if isinstance(declared, str) else default
    meta = cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER)
    return [
        (_pointer(error.absolute_path), error.message)
        for error in sorted(meta.iter_errors(schema), key=lambda e: list(e.absolute_path))
    ]


def _is_openai(entry: Any) -> bool:
    """Whether `entry` is an OpenAI `tools` entry: `{"type": "function", "function": {...}}`."""
    return isinstance(entry, dict) and entry.get("type") == "function" and "function" in entry


def _normalize(entry: dict[str, Any], default_domain: str) -> tuple[dict[str, Any], str]:
    """Map MCP (`inputSchema`/`input_schema`) and OpenAI field names to ToolSpec's."""
    data = dict(entry)
    source = "authored"
    for key in ("inputSchema", "input_schema"):
        if key in data and "parameters" not in data:
            data["parameters"] = data.pop(key)
            source = "mcp"
    for key in ("outputSchema", "output_schema"):
        if key in data and "returns" not in data:
            data["returns"] = data.pop(key)
    for key in ("annotations", "title", "strict"):
        data.pop(key, None)
    data.setdefault("domain", default_domain)
    return data, source


def _documents(path: Path, text: str) -> list[Any]:
    if path.suffix == ".jsonl":
        return [loads_json(line) for line in text.splitlines() if line.strip()]
    return [loads_json(text)]


def _entries(documents: list[Any], default_domain: str) -> Iterator[tuple[str, Any, str]]:
    """(pointer, entry, domain) for every tool in the file's documents."""
    multi = len(documents) > 1
    for doc_index, doc in enumerate(documents):
        base = f"/{doc_index}" if multi else ""
        domain = default_domain
        if isinstance(doc, dict) and isinstance(doc.get("tools"), list):
            # An MCP `tools/list` result, or a server record that wraps one.
            label = doc.get("category") or doc.get("server_name")
            domain = _slug(label) if isinstance(label, str) and label else default_domain
            for index, entry in enumerate(doc["tools"]):
                yield f"{base}/tools/{index}", entry, domain
        elif isinstance(doc, list):
            for index, entry in enumerate(doc):
                yield f"{base}/{index}", entry, domain
        else:
            yield base, doc, domain


def _pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "general"


def _failure(
    file: str, where: str, tool: str, error_type: str, problems: list[SpecProblem]
) -> Failure:
    return Failure(
        stage=STAGE,
        input_id=f"{file}#{where or '/'}",
        error_type=error_type,
        error="\n".join(str(p) for p in problems),
        source=f"{file}#{where or '/'} ({tool})",
    )


def _file_failure(path: Path, error_type: str, message: str) -> Failure:
    return Failure(
        stage=STAGE,
        input_id=str(path),
        error_type=error_type,
        error=f"{path}: {message}",
        source=str(path),
    )
