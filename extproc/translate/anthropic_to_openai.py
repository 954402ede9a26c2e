"""An Anthropic Messages client served by an OpenAI Chat Completions provider.

`request` turns the client's Messages request into a chat completion request; `response` turns the
provider's chat completion into a Message. Streams go through `stream.OpenAIStreamReader` and
`stream.AnthropicStreamWriter`. OpenAI-compatible self-hosted servers are served the same way.

Inputs are parsed JSON of unknown shape: every access is checked, and anything malformed or not
expressible raises `TranslationError` (a 400 for requests; a provider answer that cannot be read is
the caller's to classify). Nothing is deep-copied: output dicts share the client's leaf values.
"""

from __future__ import annotations

from typing import Any, Final

from extproc.translate.errors import (
    TranslationError,
    load_json,
)
from extproc.translate.fields import dumps, int_or_zero, is_number, text_field, text_or_empty
from extproc.translate.stream import (
    FinishReason,
    finish_from_openai,
    finish_to_anthropic,
)

# A tool-call argument string that is not a JSON object cannot become a tool_use `input`; rather
# than drop what the model wrote, the client gets it under this key (see `_tool_input`).
RAW_ARGUMENTS_KEY: Final = "_raw_arguments"
_SYSTEM_BLOCK_SEPARATOR: Final = "\n\n"


# --- request -------------------------------------------------------------------------------------


def _system(raw: object) -> str:
    if raw is None or isinstance(raw, str):
        return raw or ""
    if not isinstance(raw, list):
        raise TranslationError("system must be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(raw):
        text = block.get("text") if isinstance(block, dict) else None
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(text, str):
            raise TranslationError(f"system[{i}] must be a text block")
        if text:
            texts.append(text)
    # Providers differ in how many system messages they accept (some chat templates take one).
    return _SYSTEM_BLOCK_SEPARATOR.join(texts)


def _base64_source(source: dict[str, Any], where: str) -> str:
    media_type = source.get("media_type")
    data = source.get("data")
    if not isinstance(media_type, str) or not isinstance(data, str):
        raise TranslationError(f"{where}.source needs string media_type and data")
    return f"data:{media_type};base64,{data}"


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict):
        kind = source.get("type")
        if kind == "base64":
            return {
                "type": "image_url",
                "image_url": {"url": _base64_source(source, where)},
            }
        if kind == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise TranslationError(f"{where}: only base64 and url image sources can be sent to an OpenAI model")


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise TranslationError(f"{where}.source must be an object")
    kind = source.get("type")
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if kind == "base64" and source.get("media_type") == "application/pdf":
        file = {"filename": text_or_empty(block.get("title")) or "document.pdf"}
        file["file_data"] = _base64_source(source, where)
        return {"type": "file", "file": file}
    raise TranslationError(f"{where}: only inline PDF and plain-text documents can be sent to an OpenAI model")


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}.tool_use_id must be a non-empty string")
    content = block.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        parts = []
        for i, inner in enumerate(content):
            text = inner.get("text") if isinstance(inner, dict) else None
            if not isinstance(inner, dict) or inner.get("type") != "text" or not isinstance(text, str):
                raise TranslationError(f"{where}.content[{i}]: an OpenAI model accepts only text in tool results")
            parts.append({"type": "text", "text": text})
        content = parts[0]["text"] if len(parts) == 1 else parts
    elif not isinstance(content, str):
        raise TranslationError(f"{where}.content must be a string or a list of blocks")
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _user_messages(content: list[Any], where: str) -> list[dict[str, Any]]:
    """One Anthropic user turn: its tool results as tool messages, then the rest as a user message."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        if not isinstance(block, dict):
            raise TranslationError(f"{at} must be a content block")
        kind = block.get("type")
        if kind == "text":
            text = text_field(block, at)
            parts.append({"type": "text", "text": text})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            # OpenAI wants tool messages right after the assistant's tool calls, so they go first.
            tool_messages.append(_tool_message(block, at))
        elif kind == "document":
            parts.append(_document_part(block, at))
        else:
            raise TranslationError(f"{at}: block type {kind!r} cannot be sent to an OpenAI model")
    if not parts:
        return tool_messages
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tool_messages, {"role": "user", "content": parts[0]["text"]}]
    return [*tool_messages, {"role": "user", "content": parts}]


def _assistant_message(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        if not isinstance(block, dict):
            raise TranslationError(f"{at} must be a content block")
        kind = block.get("type")
        if kind == "text":
            text = text_field(block, at)
            texts.append(text)
        elif kind == "tool_use":
            call_id = block.get("id")
            name = block.get("name")
            tool_input = block.get("input", {})
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise TranslationError(f"{at} needs a string id and name")
            if not isinstance(tool_input, dict):
                raise TranslationError(f"{at}.input must be an object")
            function = {"name": name, "arguments": dumps(tool_input)}
            tool_calls.append({"id": call_id, "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):
            # Earlier thinking is the model's own scratch work: dropping it loses nothing the
            # OpenAI model could use. Anything else would change what the conversation says.
            raise TranslationError(f"{at}: block type {kind!r} cannot be sent to an OpenAI model")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _messages(raw: object, system: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise TranslationError("messages must be a list")
    if not raw:
        raise TranslationError("messages must hold at least one message")
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(f"{where} must be an object")
        role = message.get("role")
        content = message.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"{where}.role must be 'user' or 'assistant', but was {role!r}")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise TranslationError(f"{where}.content must be a string or a list of blocks")
        elif role == "user":
            out.extend(_user_messages(content, where))
        else:
            out.append(_assistant_message(content, where))
    return out


def _tools(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise TranslationError("tools must be a list")
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise TranslationError(f"{where} must be an object")
        if tool.get("type", "custom") != "custom":
            raise TranslationError(
                f"{where}: Anthropic server tool {tool.get('type')!r} is not available from an OpenAI model"
            )
        name = tool.get("name")
        schema = tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"{where}.name must be a non-empty string")
        if not isinstance(schema, dict):
            raise TranslationError(f"{where}.input_schema must be a JSON schema object")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if isinstance(description, str) and description:
            function["description"] = description
        function["parameters"] = schema
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: object) -> tuple[object, bool]:
    """(OpenAI tool_choice or None, whether parallel tool calls are disabled)."""
    if raw is None:
        return None, False
    if not isinstance(raw, dict) or raw.get("type") not in (
        "auto",
        "any",
        "none",
        "tool",
    ):
        raise TranslationError("tool_choice.type must be 'auto', 'any', 'none' or 'tool'")
    kind = raw["type"]
    no_parallel = raw.get("disable_parallel_tool_use") is True
    if kind == "tool":
        name = raw.get("name")
        if not isinstance(name, str):
            raise TranslationError("tool_choice.name must be a string")
        return {"type": "function", "function": {"name": name}}, no_parallel
    return {"auto": "auto", "any": "required", "none": "none"}[kind], no_parallel


def _response_format(output_config: object) -> dict[str, Any] | None:
    if not isinstance(output_config, dict):
        return None
    output_format = output_config.get("format")
    if output_format is None:
        return None
    schema = output_format.get("schema") if isinstance(output_format, dict) else None
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        raise TranslationError("output_config.format.type must be 'json_schema'")
    if not isinstance(schema, dict):
        raise TranslationError("output_config.format.schema must be an object")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise TranslationError(f"max_tokens must be a positive integer, but was {max_tokens!r}")
        # max_tokens is refused by OpenAI's reasoning models; max_completion_tokens is accepted by all.
        out["max_completion_tokens"] = max_tokens
    for field in ("temperature", "top_p"):
        value = body.get(field)
        if value is not None:
            if not is_number(value):
                raise TranslationError(f"{field} must be a number, but was {value!r}")
            out[field] = value
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop_sequences must be a list of strings")
        if stop:
            out["stop"] = stop


def request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The chat completion request for an Anthropic Messages request."""
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    mcp_servers = body.get("mcp_servers")
    if mcp_servers:
        raise TranslationError("mcp_servers are not available from an OpenAI model")
    out: dict[str, Any] = {
        "model": model,
        "messages": _messages(body.get("messages"), _system(body.get("system"))),
    }
    _sampling(body, out)

    tools = body.get("tools")
    if tools is not None:
        out_tools = _tools(tools)
        choice, no_parallel = _tool_choice(body.get("tool_choice"))
        # OpenAI refuses tool_choice and parallel_tool_calls when no tools are given.
        if out_tools:
            out["tools"] = out_tools
            if choice is not None:
                out["tool_choice"] = choice
            if no_parallel:
                out["parallel_tool_calls"] = False

    response_format = _response_format(body.get("output_config"))
    if response_format is not None:
        out["response_format"] = response_format
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise TranslationError(f"stream must be a boolean, but was {stream!r}")
    if stream:
        out["stream"] = True
        # Without it an OpenAI stream carries no usage, and the Anthropic client expects some.
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user, str) and user:
        out["user"] = user
    return out


# --- response ------------------------------------------------------------------------------------


def _tool_input(arguments: object) -> dict[str, Any]:
    """Best effort: the provider already answered, so a bad argument string must not fail it."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = load_json(arguments)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    return {RAW_ARGUMENTS_KEY: arguments}


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some OpenAI-compatible servers answer with text parts
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _usage(usage: object) -> dict[str, Any]:
    counts = usage if isinstance(usage, dict) else {}
    details = counts.get("prompt_tokens_details")
    cached = int_or_zero(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = int_or_zero(counts.get("prompt_tokens"))
    # OpenAI's prompt_tokens includes cached tokens; Anthropic's input_tokens leaves them out.
    out: dict[str, Any] = {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": int_or_zero(counts.get("completion_tokens")),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def response(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic Message for a chat completion; `model` is the model that served it."""
    choices = body.get("choices") if isinstance(body, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise TranslationError("the provider's answer is not a chat completion")
    message: dict[str, Any] = choice["message"]
    content: list[dict[str, Any]] = []
    text = _content_text(message.get("content")) or _content_text(message.get("refusal"))
    if text:
        content.append({"type": "text", "text": text})
    tool_calls = message.get("tool_calls")
    for call in tool_calls if isinstance(tool_calls, list) else ():
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        content.append(
            {
                "type": "tool_use",
                "id": text_or_empty(call.get("id")),
                "name": text_or_empty(function.get("name")),
                "input": _tool_input(function.get("arguments")),
            }
        )
    finish = finish_from_openai(choice.get("finish_reason"))
    if finish is FinishReason.STOP and len(content) > bool(text):
        # Some OpenAI-compatible servers say "stop" after tool calls; Anthropic clients run their
        # tools only on "tool_use".
        finish = FinishReason.TOOL_CALLS
    provider_id = text_or_empty(body.get("id"))
    return {
        "id": provider_id if provider_id.startswith("msg_") else f"msg_{provider_id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": finish_to_anthropic(finish),
        "stop_sequence": None,
        "usage": _usage(body.get("usage")),
    }
