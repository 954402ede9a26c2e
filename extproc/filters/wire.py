"""Encoding and decoding of ext_proc messages: the only module that knows protobuf shapes.

Processors speak plain Python (dicts of headers, bytes, `Meta` dicts); these helpers build the
ProcessingResponse messages from that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2, text_format

from ..core.decision import Meta

# xds-protos ships no type stubs: its messages are Any to mypy. Names for readers, not checks.
ProcessingRequest: TypeAlias = Any
ProcessingResponse: TypeAlias = Any
Mode = processing_mode_pb2.ProcessingMode

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"

Scalar = str | float | bool


def header_map(headers: ep.HttpHeaders, wanted: frozenset[str] | None = None) -> dict[str, str]:
    """Lower-case name → value (Envoy sends names lower-cased; raw_value carries the bytes)."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        if wanted is None or h.key in wanted:
            out[h.key] = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    return out


def mutation(set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()) -> ep.HeaderMutation:
    return ep.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE
            )
            for k, v in (set_headers or {}).items()
        ],
        remove_headers=list(remove),
    )


def common(
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    body: bytes | None = None,
) -> ep.CommonResponse:
    response = ep.CommonResponse()
    if set_headers or remove:
        response.header_mutation.CopyFrom(mutation(set_headers, remove))
    if body is not None:
        response.body_mutation.body = body
    return response


def streamed(body: bytes, end_of_stream: bool) -> ProcessingResponse:
    response = ep.CommonResponse()
    response.body_mutation.streamed_response.body = body
    response.body_mutation.streamed_response.end_of_stream = end_of_stream
    return ep.ProcessingResponse(response_body=ep.BodyResponse(response=response))


def request_headers_response(c: ep.CommonResponse | None = None) -> ProcessingResponse:
    return ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=c))


def request_body_response(c: ep.CommonResponse | None = None) -> ProcessingResponse:
    return ep.ProcessingResponse(request_body=ep.BodyResponse(response=c))


def response_headers_response(c: ep.CommonResponse | None = None) -> ProcessingResponse:
    return ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=c))


def response_body_response(c: ep.CommonResponse | None = None) -> ProcessingResponse:
    return ep.ProcessingResponse(response_body=ep.BodyResponse(response=c))


def trailers_response() -> ProcessingResponse:
    return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


def wait_longer(seconds: float) -> ProcessingResponse:
    """Asks Envoy to wait up to `seconds` for the answer to the message it sent last (honoured
    once per message, and only up to the filter's max_message_timeout)."""
    response = ep.ProcessingResponse()
    response.override_message_timeout.FromMilliseconds(round(seconds * 1000))
    return response


def immediate(status: int, headers: Mapping[str, str], body: bytes) -> ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=mutation(headers),
            body=body,
        )
    )


def with_metadata(response: ProcessingResponse, namespace: str, values: Mapping[str, Any]) -> ProcessingResponse:
    s = struct_pb2.Struct()
    s.get_or_create_struct(namespace).update(values)
    response.dynamic_metadata.CopyFrom(s)
    return response


def with_mode(response: ProcessingResponse, mode: Any) -> ProcessingResponse:
    response.mode_override.CopyFrom(mode)
    return response


def namespace(request: ProcessingRequest, name: str) -> Meta:
    """One namespace of the metadata Envoy forwarded, as plain values."""
    fm = request.metadata_context.filter_metadata
    if name not in fm:
        return {}
    return _plain(fm[name])


def _plain(s: struct_pb2.Struct) -> Meta:
    out: Meta = {}
    for key, value in s.fields.items():
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            out[key] = value.string_value
        elif kind == "number_value":
            out[key] = value.number_value
        elif kind == "bool_value":
            out[key] = value.bool_value
    return out


def attributes(request: ProcessingRequest) -> dict[str, Scalar]:
    attrs = request.attributes
    if ATTRIBUTES_KEY not in attrs:
        return {}
    return _plain(attrs[ATTRIBUTES_KEY])


_HOST_META_CACHE: dict[tuple[str, str], Meta] = {}


def host_metadata(text: str, namespace_name: str) -> Meta:
    """`xds.upstream_host_metadata` arrives as a text-format proto string. Parsing it is slow
    in Python, and an Envoy has only a handful of distinct hosts: cache by string."""
    cached = _HOST_META_CACHE.get((text, namespace_name))
    if cached is not None:
        return cached
    metadata = base_pb2.Metadata()
    text_format.Parse(text, metadata)
    values = _plain(metadata.filter_metadata[namespace_name]) if namespace_name in metadata.filter_metadata else {}
    if len(_HOST_META_CACHE) < 4096:
        _HOST_META_CACHE[(text, namespace_name)] = values
    return values
