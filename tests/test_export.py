"""Exports: every format loads with Hugging Face `datasets` and has the fields its trainer reads;
trl rows render through the shipped chat template; splits and token-balanced shards."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import DatasetDict, Json, List, Value, load_dataset
from typer.testing import CliRunner

from pipelines.chat_template import chat_template, render_chat
from pipelines.cli import app
from pipelines.export import (
    FORMATS,
    ExportError,
    SkipRow,
    balance_shards,
    export,
    sharegpt_row,
    trl_row,
    validation_ids,
)
from pipelines.parquet_io import read_rows
from pipelines.stats import approx_tokens
from schemas import arrow

SHARDS = 3
VAL_FRACTION = 0.25


@pytest.fixture(scope="module")
def exports(scripted_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    for fmt in FORMATS:
        export(scripted_run, fmt, root / fmt, shards=SHARDS, val_fraction=VAL_FRACTION, jsonl=True)
    return {fmt: root / fmt for fmt in FORMATS}


def load(folder: Path) -> DatasetDict:
    return load_dataset("parquet", data_dir=str(folder / "data"))


def all_rows(dataset: DatasetDict) -> list[dict[str, Any]]:
    return [row for split in dataset.values() for row in split]


# every format -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_loads_with_datasets_in_both_splits(
    fmt: str, exports: dict[str, Path], scripted_run: Path
) -> None:
    dataset = load(exports[fmt])
    assert set(dataset) == {"train", "validation"}
    source = read_rows(scripted_run / FORMATS[fmt].source)
    assert sum(len(split) for split in dataset.values()) == len(source)
    # The export's own card points load_dataset(OUT) at the same Parquet.
    via_card = load_dataset(str(exports[fmt]))
    assert {k: len(v) for k, v in via_card.items()} == {k: len(v) for k, v in dataset.items()}
    summary = json.loads((exports[fmt] / "export.json").read_text())
    assert summary["format"] == fmt and summary["skipped"] == []
    assert summary["fingerprint"] == json.loads((scripted_run / "manifest.json").read_text())[
        "fingerprint"
    ]


def test_trl_fields(exports: dict[str, Path], scripted_run: Path) -> None:
    dataset = load(exports["trl"])
    features = dataset["train"].features
    assert features["tools"] == List(Json())
    call = features["messages"].feature["tool_calls"].feature
    assert call["function"]["arguments"] == Json() and call["id"] == Value("string")
    source = {r["id"]: r for r in read_rows(scripted_run / "sft")}
    calls_seen = 0
    for row in all_rows(dataset):
        original = source[row["id"]]
        # tools: OpenAI function schemas, decoded to objects, as offered in the episode
        assert row["tools"] == json.loads(original["tools"])
        assert all(t["type"] == "function" and t["function"]["parameters"] for t in row["tools"])
        messages = row["messages"]
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "assistant"
        assert [m["role"] for m in messages] == [m["role"] for m in original["messages"]]
        open_calls: set[str] = set()
        for message in messages:
            for call in message["tool_calls"] or []:
                assert isinstance(call["function"]["arguments"], dict)
                assert call["type"] == "function"
                open_calls.add(call["id"])
                calls_seen += 1
            if message["role"] == "tool":
                assert message["tool_call_id"] in open_calls
    assert calls_seen > 0, "the scripted run should include tool calls"


def test_sharegpt_follows_llamafactory_rules(exports: dict[str, Path]) -> None:
    dataset = load(exports["sharegpt"])
    assert dataset["train"].features["conversations"] == List(
        {"from": Value("string"), "value": Value("string")}
    )
    kinds: Counter[str] = Counter()
    for row in all_rows(dataset):
        turns = row["conversations"]
        # LLaMA-Factory: after the system prompt, odd turns are human/observation, even turns
        # gpt/function_call, and an SFT example has an even count (it ends on the model).
        for index, turn in enumerate(turns):
            expected = ("human", "observation") if index % 2 == 0 else ("gpt", "function_call")
            assert turn["from"] in expected, (index, [t["from"] for t in turns])
        assert len(turns) % 2 == 0 and turns[-1]["from"] == "gpt"
        assert row["system"]
        names = {t["function"]["name"] for t in json.loads(row["tools"])}
        for turn in turns:
            kinds[turn["from"]] += 1
            if turn["from"] == "function_call":
                value = json.loads(turn["value"])
                for call in value if isinstance(value, list) else [value]:
                    assert call["name"] in names and isinstance(call["arguments"], dict)
            if turn["from"] == "observation":
                assert turn["value"]
    assert kinds["function_call"] and kinds["observation"]


def test_hermes_blocks(exports: dict[str, Path], scripted_run: Path) -> None:
    dataset = load(exports["hermes"])
    source = {r["id"]: r for r in read_rows(scripted_run / "sft")}
    blocks = 0
    for row in all_rows(dataset):
        turns = row["conversations"]
        system = turns[0]
        assert system["from"] == "system" and "<tools>" in system["value"]
        tools = json.loads(row["tools"])
        # The system turn is the one the shipped chat template writes for these tools.
        original_system = source[row["id"]]["messages"][0]
        rendered = render_chat([original_system], tools)
        assert rendered == f"<|im_start|>system\n{system['value']}<|im_end|>\n"
        for tool in tools:
            assert json.dumps(tool, ensure_ascii=False) in system["value"]
        assert {t["from"] for t in turns[1:]} <= {"human", "gpt", "tool"}
        assert turns[-1]["from"] == "gpt"
        names = {t["function"]["name"] for t in tools}
        for turn in turns[1:]:
            if turn["from"] == "gpt":
                for body in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", turn["value"]):
                    call = json.loads(body)
                    assert call["name"] in names and isinstance(call["arguments"], dict)
                    blocks += 1
            if turn["from"] == "tool":
                bodies = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", turn["value"])
                assert bodies and all(json.loads(b)["name"] in names for b in bodies)
    assert blocks > 0


def test_verl_prompts_carry_rubric_tools_and_state(
    exports: dict[str, Path], scripted_run: Path
) -> None:
    dataset = load(exports["verl"])
    rl = {r["id"]: r for r in read_rows(scripted_run / "rl")}
    tasks = {r["id"]: r for r in read_rows(scripted_run / "tasks")}
    for split, rows in dataset.items():
        assert sorted(r["extra_info"]["index"] for r in rows) == list(range(len(rows)))
        for row in rows:
            info = row["extra_info"]
            source = rl[info["id"]]
            assert info["split"] == split
            assert row["data_source"] == "agentmill" and row["ability"] == "tool_use"
            assert [m["role"] for m in row["prompt"]] == ["system", "user"]
            assert row["prompt"][1]["content"] == source["goal"]
            assert row["reward_model"]["style"] == "rubric"
            rubric = json.loads(row["reward_model"]["ground_truth"])
            assert rubric == json.loads(source["rubric"]) and rubric["success_criteria"]
            assert json.loads(info["tools"]) == json.loads(source["tools"])
            assert json.loads(info["initial_state"]) == json.loads(source["initial_state"])
            assert json.loads(info["expected_outcome"]) == json.loads(source["expected_outcome"])
            assert json.loads(info["tool_specs"])[0]["name"]
            task = tasks[source["task_id"]]
            kwargs = info["interaction_kwargs"]
            assert kwargs["goal"] == source["goal"]
            assert kwargs["user_withholds"] == task["user_withholds"]


# the chat template ------------------------------------------------------------------------------


def test_every_trl_row_renders_through_the_chat_template(exports: dict[str, Path]) -> None:
    rows = all_rows(load(exports["trl"]))
    assert rows
    for row in rows:
        text = render_chat(row["messages"], row["tools"])
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n")
        for tool in row["tools"]:
            assert json.dumps(tool, ensure_ascii=False) in text
            assert tool["function"]["name"] in text
        conversation = text.split("<|im_end|>\n", 1)[1]  # after the system turn's format note
        rendered_calls = [
            json.loads(body)
            for body in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", conversation)
        ]
        calls = [
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for m in row["messages"]
            for c in m["tool_calls"] or []
        ]
        assert rendered_calls == calls
        tool_messages = [m for m in row["messages"] if m["role"] == "tool"]
        assert text.count("<tool_response>") == len(tool_messages)
        for message in row["messages"][1:]:
            assert (message["content"] or "") in text
        prompt = render_chat(row["messages"][:2], row["tools"], add_generation_prompt=True)
        opening = prompt.removesuffix("<|im_start|>assistant\n")
        assert opening != prompt and text.startswith(opening)


def test_template_matches_transformers_and_masks_assistant_turns(
    exports: dict[str, Path],
) -> None:
    """transformers' own renderer gives the same text, and its assistant mask (what TRL's
    assistant_only_loss uses) covers exactly the assistant turns."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    for row in all_rows(load(exports["trl"])):
        (text,), (spans,) = utils.render_jinja_template(
            [row["messages"]], tools=row["tools"], chat_template=chat_template(),
            return_assistant_tokens_mask=True,
        )
        assert text == render_chat(row["messages"], row["tools"])
        assistant = [m for m in row["messages"] if m["role"] == "assistant"]
        assert len(spans) == len(assistant)
        for (start, end), message in zip(spans, assistant, strict=True):
            piece = text[start:end]
            assert piece.endswith("<|im_end|>") and (message["content"] or "") in piece


def test_template_rejects_unknown_roles() -> None:
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="unknown message role"):
        render_chat([{"role": "wizard", "content": "hi"}])


# splits and shards ------------------------------------------------------------------------------


def test_splits_are_deterministic_disjoint_and_sized(
    exports: dict[str, Path], scripted_run: Path, tmp_path: Path
) -> None:
    again = export(scripted_run, "trl", tmp_path / "again", shards=1, val_fraction=VAL_FRACTION)
    first = load(exports["trl"])
    second = load(tmp_path / "again")
    for split in ("train", "validation"):
        assert sorted(first[split]["id"]) == sorted(second[split]["id"]), split
    train, val = set(first["train"]["id"]), set(first["validation"]["id"])
    assert not train & val
    ids = {r["id"] for r in read_rows(scripted_run / "sft")}
    assert train | val == ids
    assert len(val) == int(VAL_FRACTION * len(ids) + 0.5)
    assert again["splits"]["validation"]["rows"] == len(val)
    # The same split for every format built on sft/.
    assert set(load(exports["sharegpt"])["validation"]["id"]) == val


def test_validation_ids_follow_the_fraction_and_ignore_order() -> None:
    ids = [f"traj_{i:04d}" for i in range(1000)]
    val = validation_ids(ids, 0.05)
    assert len(val) == 50
    assert validation_ids(list(reversed(ids)), 0.05) == val
    assert validation_ids(ids, 0.0) == set()
    assert len(validation_ids(ids[:7], 0.25)) == 2  # 1.75 rounds to 2
    with pytest.raises(ExportError):
        validation_ids(ids, 1.0)


def test_shards_balance_tokens_not_rows() -> None:
    # Two long conversations and many short ones: equal row counts would put both long ones
    # together; token balancing gives each shard one long conversation.
    sizes = [("long_a", 1000), ("long_b", 1000)] + [(f"short_{i:02d}", 50) for i in range(20)]
    groups = balance_shards(sizes, 2)
    totals = [sum(sizes[i][1] for i in g) for g in groups]
    assert sorted(totals) == [1500, 1500]
    assert {len(g) for g in groups} == {11}
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    # Skewed sizes over many rows: the heaviest shard is within a small factor of the mean.
    skewed = [(f"r{i:04d}", 10 + (i * 7919) % 997 + 3000 * (i % 50 == 0)) for i in range(800)]
    groups = balance_shards(skewed, 8)
    totals = [sum(skewed[i][1] for i in g) for g in groups]
    mean = sum(totals) / len(totals)
    assert max(totals) <= mean + max(s for _, s in skewed) and max(totals) / mean < 1.05
    assert balance_shards(skewed, 8) == groups  # deterministic
    assert len(balance_shards(sizes[:2], 5)) == 2  # never more shards than rows


def test_export_shards_are_balanced_on_disk(exports: dict[str, Path]) -> None:
    for fmt, folder in exports.items():
        summary = json.loads((folder / "export.json").read_text())
        for split, info in summary["splits"].items():
            files = sorted((folder / "data").glob(f"{split}-*.parquet"))
            assert [f"data/{f.name}" for f in files] == [s["file"] for s in info["shards"]]
            assert len(files) == min(SHARDS, info["rows"])
            assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == info["rows"]
            row_tokens = [
                [approx_tokens(json.dumps(r, ensure_ascii=False))
                 for r in pq.read_table(f).to_pylist()]
                for f in files
            ]
            tokens = [s["tokens"] for s in info["shards"]]
            assert tokens == [sum(t) for t in row_tokens]
            # Longest-first greedy: the heaviest shard exceeds the mean by less than one row.
            largest = max(t for shard in row_tokens for t in shard)
            assert max(tokens) <= sum(tokens) / len(tokens) + largest, (fmt, split, tokens)


def test_jsonl_mirrors_parquet(exports: dict[str, Path]) -> None:
    for fmt, folder in exports.items():
        for parquet in (folder / "data").glob("*.parquet"):
            lines = (folder / "jsonl" / f"{parquet.stem}.jsonl").read_text().splitlines()
            assert len(lines) == pq.ParquetFile(parquet).metadata.num_rows
            first = json.loads(lines[0])
            assert set(first) == set(FORMATS[fmt].schema.names)
            if fmt == "trl":
                assert isinstance(first["tools"][0], dict)
    sharegpt = load_dataset("json", data_dir=str(exports["sharegpt"] / "jsonl"))
    assert set(sharegpt) == {"train", "validation"}


# rows a format cannot hold, empty runs, the CLI --------------------------------------------


def _row(messages: list[dict[str, Any]]) -> dict[str, Any]:
    full = [{"tool_calls": None, "tool_call_id": None, "name": None, "content": None, **m}
            for m in messages]
    return {"id": "traj_x", "messages": full, "tools": "[]"}


def test_rows_a_format_cannot_hold_are_skipped_with_a_reason() -> None:
    bad_args = _row(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "{}"},
            {"role": "assistant", "content": "done"},
        ]
    )
    with pytest.raises(SkipRow, match="not valid JSON"):
        trl_row(bad_args)
    with pytest.raises(SkipRow, match="no assistant turn"):
        trl_row(_row([{"role": "user", "content": "hi"}]))
    with pytest.raises(SkipRow, match="LLaMA-Factory expects"):
        sharegpt_row(_row([{"role": "assistant", "content": "I start"}]))
    # A trailing user turn is cut: the example ends on the assistant.
    row = trl_row(_row([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
                        {"role": "user", "content": "bye"}]))
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_export_of_a_run_without_passing_rows_points_at_rejected(
    scripted_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(scripted_run / "rejected", run / "rejected")
    (run / "sft").mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=arrow.SFT_SCHEMA), run / "sft" / "part.parquet")
    with pytest.raises(ExportError, match="rejected trajectories are in"):
        export(run, "trl", tmp_path / "out")
    result = CliRunner().invoke(app, ["export", str(run), "--format", "trl", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1 and "no rows to export" in result.output


def test_cli_export(scripted_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["export", str(scripted_run), "--format", "sharegpt", "--shards", "2",
         "--val-fraction", "0.3", "--out", str(tmp_path / "sg")],
    )
    assert result.exit_code == 0, result.output
    assert "train:" in result.output and "validation:" in result.output
    assert sorted(p.name for p in (tmp_path / "sg" / "data").iterdir())[0].startswith("train-")
    bad = runner.invoke(app, ["export", str(scripted_run), "--format", "alpaca", "--out",
                              str(tmp_path / "x")])
    assert bad.exit_code == 1 and "unknown format" in bad.output


def test_reexport_into_the_same_folder_is_not_served_from_the_datasets_cache(
    scripted_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    sizes = []
    # 0 then 0.5: the splits differ for any run with two or more passing rows (the scripted
    # fixture's count varies with the order its episodes finish in).
    for fraction in (0.0, 0.5):
        export(scripted_run, "hermes", out, shards=2, val_fraction=fraction)
        sizes.append({k: len(v) for k, v in load_dataset(str(out)).items()})
    assert "validation" not in sizes[0] and "validation" in sizes[1]
    assert sizes[1]["validation"] == json.loads((out / "export.json").read_text())["splits"][
        "validation"
    ]["rows"]
