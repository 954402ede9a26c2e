"""What a rung may be given (T5): the capability matrix's word on a task class and a model, and
the tool mode a try on the rung runs in. Pure reads of the policy; `choose`, `explain` and the
attempt filter all ask here, so the three never disagree."""

from __future__ import annotations

from ..core import Capability, ToolMode
from ..policy import Policy


def matrix_forbids(policy: Policy, task: str, ladder: str, index: int, requested: str) -> str | None:
    """Why the capability matrix rules this rung out for the task class, or None.

    A `degraded_only` model serves only as a fallback: never as the ladder's first rung, so an
    answer from it is always flagged degraded."""
    model = policy.ladders[ladder][index].model_for(requested)
    allowance = policy.allowance(task, model)
    if allowance == "forbidden":
        return f"capability matrix: task {task!r} may not use model {model!r}"
    if allowance == "degraded_only" and index == 0:
        return f"capability matrix: model {model!r} serves task {task!r} only as a fallback (degraded_only)"
    return None


def tool_mode_of(policy: Policy, ladder: str, index: int) -> ToolMode:
    """The tool mode of a try on this rung: its own, narrowed to read_only below the tier the
    policy's write tools need, and to no_tools on a `strip_tools` rung of a provider without tool
    calling."""
    rung = policy.ladders[ladder][index]
    mode = rung.tool_mode
    if mode is ToolMode.FULL and policy.tools.write and policy.tier_of(ladder, index) > policy.tools.write_lowest_tier:
        mode = ToolMode.READ_ONLY
    if mode.sends_tools and rung.strip_tools and not offers_tools(policy, ladder, index):
        mode = ToolMode.NO_TOOLS
    return mode


def offers_tools(policy: Policy, ladder: str, index: int) -> bool:
    """Whether the rung's provider can take tools at all."""
    return Capability.TOOLS in policy.providers[policy.ladders[ladder][index].provider].capabilities


def refuses_tools(policy: Policy, ladder: str, index: int) -> bool:
    """A request with tools cannot go to this rung: its mode would send tools its provider cannot
    take (a rung's tools are never dropped silently unless the policy says so)."""
    return tool_mode_of(policy, ladder, index).sends_tools and not offers_tools(policy, ladder, index)
