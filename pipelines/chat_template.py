"""The chat template shipped with agentmill, and a renderer that applies it as transformers does.

`templates/chatml_tools.jinja` is ChatML with tools in the Hermes / Qwen2.5 conventions: the tools
listed in the system turn, `<tool_call>` JSON blocks in assistant turns, `<tool_response>` blocks in
a user turn. `render_chat` compiles it in the environment transformers' `apply_chat_template`
uses (jinja2's ImmutableSandboxedEnvironment, trimmed blocks, loop controls, a non-escaping
`tojson`, `raise_exception`, and the `{% generation %}` tag), so what renders here renders in a
trainer. The hermes export writes the same system text (`TOOLS_PREAMBLE`, `TOOLS_FORMAT`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE = "chatml_tools.jinja"

TOOLS_PREAMBLE = (
    "You may call one or more functions to help with the user's request. The functions you can "
    "call are described, one JSON signature per line, inside <tools></tools> tags:\n<tools>\n"
)
TOOLS_FORMAT = (
    "</tools>\n\nTo call a function, write a JSON object with its name and arguments inside "
    '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<arguments-object>}\n</tool_call>"
)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks assistant text with it; a
    plain render passes the body through unchanged."""

    tags = frozenset({"generation"})

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def chat_template() -> str:
    """The ChatML-with-tools template shipped in `pipelines/templates/`."""
    return resources.files("pipelines").joinpath("templates", TEMPLATE).read_text("utf-8")


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers replaces jinja's tojson, which HTML-escapes, with plain json.dumps.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@cache
def _compiled(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render_chat(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    template: str | None = None,
) -> str:
    """Render a conversation through the chat template (the shipped one unless given)."""
    return _compiled(template or chat_template()).render(
        messages=messages, tools=tools or None, add_generation_prompt=add_generation_prompt
    )
