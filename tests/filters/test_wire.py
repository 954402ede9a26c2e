"""wire: the only module that knows protobuf shapes; flags: the x-rungway-* headers."""

from __future__ import annotations

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.core import Failure
from extproc.core.names import ATTEMPTS, DEGRADED, META_DECISION, META_TRIP, POLICY_VERSION, REASON, SERVED_BY, TIER
from extproc.filters.flags import NO_REASON, flags
from extproc.filters.wire import (
    attributes,
    common,
    header_map,
    host_metadata,
    immediate,
    namespace,
    response_headers_response,
    streamed,
    with_metadata,
)
from tests.builders import dynamic_metadata, host_metadata_text, request_headers, set_headers

# Exactly what Envoy 1.40 puts in the xds.upstream_host_metadata attribute (text-format Metadata).
ENVOY_HOST_METADATA = """filter_metadata {
  key: "rungway"
  value {
    fields {
      key: "ladder"
      value {
        string_value: "main"
      }
    }
    fields {
      key: "rung"
      value {
        number_value: 2
      }
    }
    fields {
      key: "slot"
      value {
        number_value: 1
      }
    }
  }
}
"""


def test_host_metadata_parses_envoys_text_format() -> None:
    assert host_metadata(ENVOY_HOST_METADATA, META_DECISION) == {"ladder": "main", "rung": 2.0, "slot": 1.0}
    assert host_metadata(host_metadata_text("l", 0, 0), META_DECISION) == {"ladder": "l", "rung": 0.0, "slot": 0.0}


def test_host_metadata_without_our_namespace_is_empty() -> None:
    assert host_metadata("", META_DECISION) == {}
    foreign = 'filter_metadata {\n  key: "envoy.lb"\n  value {\n    fields {\n      key: "canary"\n      value {\n        bool_value: true\n      }\n    }\n  }\n}\n'
    assert host_metadata(foreign, META_DECISION) == {}


def test_host_metadata_cache_answers_per_namespace() -> None:
    # The parse cache is keyed by the text: a second namespace of the same host must not get the first's values.
    text = host_metadata_text("cache-check", 1)
    assert host_metadata(text, META_DECISION)["ladder"] == "cache-check"
    assert host_metadata(text, "envoy.lb") == {}


def test_header_map_prefers_raw_value_and_filters_names() -> None:
    headers = ep.HttpHeaders()
    headers.headers.headers.add(key=":path", raw_value=b"/v1/messages")
    headers.headers.headers.add(key="x-old", value="text-value")
    headers.headers.headers.add(key="x-bytes", raw_value="caf\u00e9".encode())
    assert header_map(headers) == {":path": "/v1/messages", "x-old": "text-value", "x-bytes": "caf\u00e9"}
    assert header_map(headers, frozenset({":path"})) == {":path": "/v1/messages"}


def test_namespace_and_attributes_are_plain_scalars() -> None:
    request = request_headers(
        {":path": "/"},
        metadata={META_DECISION: {"routed": True, "tries": 3, "ladder": "main", "nested": {"a": 1}}},
        attributes={"upstream.request_attempt_count": 2},
    )
    assert namespace(request, META_DECISION) == {"routed": True, "tries": 3.0, "ladder": "main"}
    assert namespace(request, META_TRIP) == {}
    assert attributes(request) == {"upstream.request_attempt_count": 2.0}
    assert attributes(request_headers({":path": "/"})) == {}


def test_common_sets_and_removes_headers_and_replaces_the_body() -> None:
    response = response_headers_response(common({"x-a": "1"}, remove=["x-b"], body=b"{}"))
    assert set_headers(response) == {"x-a": "1"}
    mutation = response.response_headers.response
    assert list(mutation.header_mutation.remove_headers) == ["x-b"]
    assert mutation.body_mutation.body == b"{}"
    assert not response_headers_response(common()).response_headers.response.HasField("header_mutation")


def test_streamed_marks_the_end_of_stream() -> None:
    response = streamed(b"data: x\n\n", True)
    assert response.response_body.response.body_mutation.streamed_response.body == b"data: x\n\n"
    assert response.response_body.response.body_mutation.streamed_response.end_of_stream


def test_immediate_answer_carries_status_headers_and_body() -> None:
    response = immediate(400, {"content-type": "application/json"}, b"{}")
    assert response.immediate_response.status.code == 400
    assert response.immediate_response.body == b"{}"


def test_with_metadata_writes_one_namespace() -> None:
    response = with_metadata(response_headers_response(), META_TRIP, {"fail": "timeout", "n": 2})
    assert dynamic_metadata(response, META_TRIP) == {"fail": "timeout", "n": 2.0}


def test_flags_say_who_served_and_why() -> None:
    assert flags(
        served_by="secondary/claude", tier=1, degraded=True, reason=Failure.TIMEOUT, policy_version="v9", attempts=2
    ) == {
        SERVED_BY: "secondary/claude",
        TIER: "1",
        DEGRADED: "true",
        REASON: "timeout",
        POLICY_VERSION: "v9",
        ATTEMPTS: "2",
    }
    plain = flags(served_by="rungway", tier=None, degraded=False, reason=None, policy_version="v9", attempts=0)
    assert (plain[TIER], plain[DEGRADED], plain[REASON]) == ("none", "false", NO_REASON)
