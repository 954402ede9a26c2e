"""An OpenAI Chat Completions client served by an Anthropic Messages provider.

`request` turns the client's chat completion request into a Messages request; `response` turns the
provider's Message into a chat completion. Streams go through `stream.AnthropicStreamReader` and
`stream.OpenAIStreamWriter`.

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
from extproc.translate.fields import dumps, is_int, is_number, text_field, text_or_empty
from extproc.translate.stream import finish_from_anthropic

DEFAULT_MAX_TOKENS: Final = 4096  # Anthropic requires max_tokens; OpenAI clients may omit it
_IMAGE_MEDIA_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_JSON_OBJECT_INSTRUCTION: Final = (
    "Respond with a single JSON object and nothing else: no prose before or after it, no code fences."
)
_JSON_SCHEMA_INSTRUCTION: Final = (
    "Respond with a single JSON object that conforms to the JSON schema below, and nothing else: "
    "no prose before or after it, no code fences.\nJSON schema: "
)


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


# --- request -------------------------------------------------------------------------------------


def _text_parts(content: object, where: str) -> list[dict[str, Any]]:
    """Content that may only hold text (system, developer and tool messages)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_text_block(content)] if content.strip() else []
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content must be a string or a list of content parts")
    blocks = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise TranslationError(f"{where}.content[{i}] must be a text part")
        text = part.get("text")
        if not isinstance(text, str):
            raise TranslationError(f"{where}.content[{i}].text must be a string")
        if text.strip():  # Anthropic rejects blank text blocks
            blocks.append(_text_block(text))
    return blocks


def _data_url(url: str, where: str) -> tuple[str, str]:
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64":
        raise TranslationError(f"{where}: a data URL must be base64-encoded (data:<type>;base64,…)")
    return media_type, data


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise TranslationError(f"{where}.image_url.url must be a string")
    if url.startswith("data:"):
        media_type, data = _data_url(url, where)
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise TranslationError(
                f"{where}: image type {media_type!r} is not supported by Anthropic models "
                "(use image/jpeg, image/png, image/gif or image/webp)"
            )
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise TranslationError(f"{where}.image_url.url must be an http(s) or data URL")
    return {"type": "image", "source": source}


def _document_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    file_data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(file_data, str) or not file_data.startswith("data:"):
        raise TranslationError(
            f"{where}: only inline files (file.file_data as a data URL) can be sent to an "
            "Anthropic model, not uploaded file ids"
        )
    media_type, data = _data_url(file_data, where)
    if media_type != "application/pdf":
        raise TranslationError(f"{where}: only PDF files can be sent to an Anthropic model")
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text_parts(content, where)
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content must be a string or a list of content parts")
    blocks = []
    for i, part in enumerate(content):
        at = f"{where}.content[{i}]"
        if not isinstance(part, dict):
            raise TranslationError(f"{at} must be a content part object")
        kind = part.get("type")
        if kind == "text":
            text = text_field(part, at)
            if text.strip():
                blocks.append(_text_block(text))
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        elif kind == "file":
            blocks.append(_document_block(part, at))
        else:
            raise TranslationError(f"{at}: content part type {kind!r} cannot be sent to an Anthropic model")
    return blocks


def _tool_input(arguments: object, where: str) -> Any:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise TranslationError(f"{where}.function.arguments must be a JSON string")
    if not arguments.strip():
        return {}
    try:
        value = load_json(arguments)
    except ValueError:
        raise TranslationError(f"{where}.function.arguments is not valid JSON") from None
    if not isinstance(value, dict):
        raise TranslationError(f"{where}.function.arguments must be a JSON object")
    return value


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if message.get("function_call") is not None:
        raise TranslationError(f"{where}.function_call is deprecated: send tool_calls instead")
    content = message.get("content")
    if isinstance(content, list):
        # Refusal parts are the assistant's own words: keep them as text.
        content = [
            {"type": "text", "text": part.get("refusal")}
            if isinstance(part, dict) and part.get("type") == "refusal"
            else part
            for part in content
        ]
    blocks = _text_parts(content, where)
    tool_calls = message.get("tool_calls")
    if tool_calls is None:
        return blocks
    if not isinstance(tool_calls, list):
        raise TranslationError(f"{where}.tool_calls must be a list")
    for i, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{i}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise TranslationError(f"{at}: only function tool calls can be sent to an Anthropic model")
        function = call.get("function")
        call_id = call.get("id")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise TranslationError(f"{at} needs a string id and function.name")
        tool_input = _tool_input(function.get("arguments") if isinstance(function, dict) else None, at)
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": tool_input})
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}.tool_call_id must be a non-empty string")
    content = message.get("content")
    result: str | list[dict[str, Any]] = content if isinstance(content, str) else _text_parts(content, where)
    return {"type": "tool_result", "tool_use_id": call_id, "content": result}


def _turn_content(role: str, blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if role == "user":
        # Anthropic wants a turn's tool results before anything else in it.
        results = [b for b in blocks if b["type"] == "tool_result"]
        if results and len(results) < len(blocks):
            blocks = results + [b for b in blocks if b["type"] != "tool_result"]
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        text: str = blocks[0]["text"]
        return text
    return blocks


def _messages(raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The client's messages as (system blocks, strictly alternating Anthropic turns)."""
    if not isinstance(raw, list):
        raise TranslationError("messages must be a list")
    system: list[dict[str, Any]] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(f"{where} must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            # Anthropic has one top-level system prompt; instructions given mid-conversation join it.
            system.extend(_text_parts(content, where))
            continue
        if role == "user":
            blocks = _user_blocks(content, where)
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            role = "user"
            blocks = [_tool_result_block(message, where)]
        else:
            raise TranslationError(f"{where}.role {role!r} is not supported")
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message says nothing
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)  # Anthropic needs strictly alternating roles
        else:
            turns.append((role, blocks))
    if not turns:
        raise TranslationError("messages must hold at least one user or assistant message")
    role, blocks = turns[-1]
    if role == "assistant" and blocks[-1]["type"] == "text":
        # A final assistant turn is a prefill, and Anthropic refuses one that ends in whitespace.
        # (Blank blocks never get here, so something is left.)
        blocks[-1] = _text_block(blocks[-1]["text"].rstrip())
    return system, [{"role": role, "content": _turn_content(role, blocks)} for role, blocks in turns]


def _tools(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise TranslationError("tools must be a list")
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise TranslationError(f"{where}: only function tools can be sent to an Anthropic model")
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise TranslationError(f"{where}.function.name must be a non-empty string")
        schema = function.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        elif not isinstance(schema, dict):
            raise TranslationError(f"{where}.function.parameters must be a JSON schema object")
        elif "type" not in schema:
            schema = {"type": "object", **schema}  # Anthropic insists on an object schema
        out: dict[str, Any] = {"name": name}
        description = function.get("description")
        if isinstance(description, str) and description:
            out["description"] = description
        out["input_schema"] = schema
        tools.append(out)
    return tools


def _tool_choice(raw: object, parallel: object) -> dict[str, Any] | None:
    choice: dict[str, Any] | None
    if raw is None:
        choice = None
    elif raw == "auto":
        choice = {"type": "auto"}
    elif raw == "required":
        choice = {"type": "any"}
    elif raw == "none":
        return {"type": "none"}
    elif isinstance(raw, dict) and raw.get("type") == "function":
        function = raw.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise TranslationError("tool_choice.function.name must be a string")
        choice = {"type": "tool", "name": name}
    else:
        raise TranslationError("tool_choice must be 'auto', 'required', 'none' or a function choice")
    if parallel is False:
        choice = choice or {"type": "auto"}
        choice["disable_parallel_tool_use"] = True
    return choice


def _json_instruction(response_format: object) -> str | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise TranslationError("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _JSON_OBJECT_INSTRUCTION
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise TranslationError("response_format.json_schema.schema must be an object")
        return _JSON_SCHEMA_INSTRUCTION + dumps(schema)
    raise TranslationError("response_format.type must be 'text', 'json_object' or 'json_schema'")


def _max_tokens(body: dict[str, Any]) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not is_int(value) or value < 1:
            raise TranslationError(f"{field} must be a positive integer, but was {value!r}")
        limit: int = value
        return limit
    return DEFAULT_MAX_TOKENS


def _stop_sequences(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise TranslationError("stop must be a string or a list of strings")


def _refuse_inexpressible(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError(f"n must be 1 for an Anthropic model, but was {n!r}")
    if body.get("logprobs"):
        raise TranslationError("logprobs are not available from an Anthropic model")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise TranslationError("audio output is not available from an Anthropic model")
    if body.get("functions") or body.get("function_call") is not None:
        raise TranslationError("functions/function_call are deprecated: send tools/tool_choice instead")


def request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Messages request for an OpenAI chat completion request."""
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    _refuse_inexpressible(body)
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": _max_tokens(body),
        "messages": messages,
    }

    instruction = _json_instruction(body.get("response_format"))
    if instruction is not None:
        system.append(_text_block(instruction))
    if len(system) == 1:
        out["system"] = system[0]["text"]
    elif system:
        out["system"] = system

    tools = body.get("tools")
    if tools is not None:
        out_tools = _tools(tools)
        # OpenAI accepts tool_choice without tools only as a no-op; Anthropic rejects it.
        if out_tools:
            out["tools"] = out_tools
            choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
            if choice is not None:
                out["tool_choice"] = choice

    temperature = body.get("temperature")
    if temperature is not None:
        if not is_number(temperature):
            raise TranslationError(f"temperature must be a number, but was {temperature!r}")
        # OpenAI's range is [0, 2], Anthropic's [0, 1]: the closest Anthropic can do is its maximum.
        out["temperature"] = min(temperature, 1.0)
    top_p = body.get("top_p")
    if top_p is not None:
        if not is_number(top_p):
            raise TranslationError(f"top_p must be a number, but was {top_p!r}")
        out["top_p"] = top_p
    stop = _stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise TranslationError(f"stream must be a boolean, but was {stream!r}")
    if stream:
        out["stream"] = True
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


# --- response ------------------------------------------------------------------------------------


def _usage(usage: object) -> dict[str, Any]:
    counts = usage if isinstance(usage, dict) else {}

    def count(field: str) -> int:
        value = counts.get(field)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    cached = count("cache_read_input_tokens")
    # Anthropic's input_tokens leaves out cached tokens; OpenAI's prompt_tokens counts them all.
    prompt = count("input_tokens") + count("cache_creation_input_tokens") + cached
    completion = count("output_tokens")
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def response(body: dict[str, Any], model: str, *, created: int) -> dict[str, Any]:
    """The chat completion for an Anthropic Message; `model` is the model that served it."""
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise TranslationError("the provider's answer is not an Anthropic message")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in body["content"]:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
        elif kind == "tool_use":
            tool_input = block.get("input")
            function = {
                "name": text_or_empty(block.get("name")),
                "arguments": dumps(tool_input if isinstance(tool_input, dict) else {}),
            }
            call = {
                "id": text_or_empty(block.get("id")),
                "type": "function",
                "function": function,
            }
            tool_calls.append(call)
        # thinking and server-tool blocks have no Chat Completions counterpart
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    provider_id = text_or_empty(body.get("id"))
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_from_anthropic(body.get("stop_reason")).value,
    }
    return {
        "id": provider_id if provider_id.startswith("chatcmpl-") else f"chatcmpl-{provider_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(body.get("usage")),
    }
