"""Filters: the two ext_proc processors, one object per gRPC stream, without I/O.

`decide` (downstream, once per request) picks the ladder; `attempt` (upstream, once per try)
rewrites the request for its rung and judges the answer. `wire` is the only module that knows
protobuf shapes. May import: core, policy, routing, health, translate, audit.
"""
