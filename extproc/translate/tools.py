"""Tool modes (T5): what of a request's tools a rung is offered, in the client's dialect.

`shape_tools` removes the tools a rung's mode does not allow and keeps the rest of the request
coherent: a `tool_choice` never names a removed tool (it becomes "auto", or goes with the last
tool), `parallel_tool_calls` never outlives the tools (OpenAI answers 400 to both), and once no
tool is left the conversation's earlier tool calls and results become plain text (Anthropic
answers 400 to tool blocks in a request without tools). `plan_only` also asks the model, in a
system instruction of Rungway's own, to answer with the calls it would make as data.

Runs on the client's body, before translation to the rung's dialect. May import: core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..core import Dialect, ToolMode
from .fields import dumps

_OPENAI_TOOL_FIELDS: Final = ("tools", "tool_choice", "parallel_tool_calls")
_ANTHROPIC_TOOL_FIELDS: Final = ("tools", "tool_choice")
PLAN_KEY: Final = "planned_tool_calls"
PLAN_INSTRUCTION: Final = (
    "[rungway] Tools are not available to you for this request: do not call any. If answering "
    f'needs them, reply with only a JSON object {{"{PLAN_KEY}": [{{"name": ..., "arguments": {{...}}}}]}} '
    "listing, in order, the calls you would make, and nothing else. The tools the request offered: "
)


@dataclass(frozen=True, slots=True)
class ToolShaping:
    body: dict[str, Any]
    removed: tuple[str, ...]  # names of the tools taken away, in the request's order
    planned: bool  # plan_only asked the model for its intended calls as data


def tool_name(tool: object) -> str | None:
    """A tool's name in either dialect (OpenAI function or custom tools, Anthropic tools)."""
    if not isinstance(tool, dict):
        return None
    for key in ("function", "custom"):
        inner = tool.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            return str(inner["name"])
    name = tool.get("name")
    return name if isinstance(name, str) else None


def shape_tools(
    dialect: Dialect,
    body: dict[str, Any],
    mode: ToolMode,
    write: frozenset[str],
    retrieval: frozenset[str] = frozenset(),
) -> ToolShaping:
    """The body with only the tools `mode` allows (write and retrieval tools are the policy's lists)."""
    tools = body.get("tools")
    if mode is ToolMode.FULL or not isinstance(tools, list) or not tools:
        return ToolShaping(body, (), False)
    anthropic = dialect.wire is Dialect.ANTHROPIC
    if mode is ToolMode.READ_ONLY:
        kept = [t for t in tools if tool_name(t) not in write]
    elif mode is ToolMode.RETRIEVAL_ONLY:
        kept = [t for t in tools if tool_name(t) in retrieval]
    else:
        kept = []
    removed = tuple(name for t in tools if t not in kept and (name := tool_name(t)) is not None)
    if len(kept) == len(tools):
        return ToolShaping(body, (), False)
    if kept:
        out = {**body, "tools": kept}
        choice = _choice_without(anthropic, body.get("tool_choice"), {tool_name(t) for t in kept})
        if choice is None:
            out.pop("tool_choice", None)
        else:
            out["tool_choice"] = choice
        return ToolShaping(out, removed, False)
    fields = _ANTHROPIC_TOOL_FIELDS if anthropic else _OPENAI_TOOL_FIELDS
    out = {k: v for k, v in body.items() if k not in fields}
    messages = out.get("messages")
    if isinstance(messages, list):
        out["messages"] = [(_anthropic_plain if anthropic else _openai_plain)(m) for m in messages]
    if mode is not ToolMode.PLAN_ONLY:
        return ToolShaping(out, removed, False)
    offered = [_tool_summary(t) for t in tools]
    instruction = PLAN_INSTRUCTION + dumps(offered)
    return ToolShaping(_with_instruction(anthropic, out, instruction), removed, True)


def _choice_without(anthropic: bool, choice: object, kept: set[str | None]) -> object:
    """A tool_choice that names only kept tools: a removed one becomes "auto"."""
    if not isinstance(choice, dict):
        return choice  # "auto", "none", "required" (OpenAI) still hold while tools remain
    if anthropic:
        if choice.get("type") == "tool" and choice.get("name") not in kept:
            auto: dict[str, Any] = {"type": "auto"}
            if "disable_parallel_tool_use" in choice:
                auto["disable_parallel_tool_use"] = choice["disable_parallel_tool_use"]
            return auto
        return choice
    if choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if isinstance(allowed, dict) and isinstance(allowed.get("tools"), list):
            still = [t for t in allowed["tools"] if tool_name(t) in kept]
            return {**choice, "allowed_tools": {**allowed, "tools": still}} if still else "auto"
        return choice
    return choice if tool_name(choice) in kept else "auto"


def _tool_summary(tool: object) -> dict[str, Any]:
    """What the model needs to plan a call: name, description, parameters."""
    if not isinstance(tool, dict):
        return {}
    inner = tool.get("function") or tool.get("custom") or tool
    if not isinstance(inner, dict):
        return {}
    summary = {"name": tool_name(tool)}
    for key in ("description", "parameters", "input_schema"):
        if key in inner:
            summary["parameters" if key == "input_schema" else key] = inner[key]
    return summary


def _with_instruction(anthropic: bool, body: dict[str, Any], text: str) -> dict[str, Any]:
    if anthropic:
        system = body.get("system")
        if isinstance(system, list):
            return {**body, "system": [*system, {"type": "text", "text": text}]}
        if isinstance(system, str) and system.strip():
            return {**body, "system": system + "\n\n" + text}
        return {**body, "system": text}
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    at = 0
    while at < len(messages) and isinstance(messages[at], dict) and messages[at].get("role") in ("system", "developer"):
        at += 1
    return {**body, "messages": [*messages[:at], {"role": "system", "content": text}, *messages[at:]]}


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return "" if content is None else dumps(content)


def _call_text(name: object, arguments: object) -> str:
    args = arguments if isinstance(arguments, str) else dumps(arguments)
    return f"[called tool {name} with {args}]"


def _result_text(call_id: object, content: object) -> str:
    return f"[result of tool call {call_id}: {_text_of(content)}]"


def _openai_plain(message: Any) -> Any:
    """An OpenAI message with its tool calls and results as text."""
    if not isinstance(message, dict):
        return message
    role = message.get("role")
    if role == "assistant" and message.get("tool_calls"):
        calls = message["tool_calls"] if isinstance(message["tool_calls"], list) else []
        lines = [_text_of(message.get("content"))] if message.get("content") else []
        for call in calls:
            fn = call.get("function", {}) if isinstance(call, dict) else {}
            fn = fn if isinstance(fn, dict) else {}
            lines.append(_call_text(fn.get("name"), fn.get("arguments", "")))
        plain = {k: v for k, v in message.items() if k not in ("tool_calls", "function_call")}
        return {**plain, "content": "\n".join(lines)}
    if role in ("tool", "function"):
        return {
            "role": "user",
            "content": _result_text(message.get("tool_call_id") or message.get("name"), message.get("content")),
        }
    return message


def _anthropic_plain(message: Any) -> Any:
    """An Anthropic message with its tool_use and tool_result blocks as text blocks."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    blocks = [_anthropic_block(block) for block in message["content"]]
    return {**message, "content": blocks}


def _anthropic_block(block: Any) -> Any:
    convert: dict[str, Callable[[dict[str, Any]], str]] = {
        "tool_use": lambda b: _call_text(b.get("name"), b.get("input", {})),
        "server_tool_use": lambda b: _call_text(b.get("name"), b.get("input", {})),
        "tool_result": lambda b: _result_text(b.get("tool_use_id"), b.get("content")),
    }
    if isinstance(block, dict) and block.get("type") in convert:
        return {"type": "text", "text": convert[block["type"]](block)}
    return block
