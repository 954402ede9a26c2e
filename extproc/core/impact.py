"""Impact classes (T3): how much a request matters, which decides when it leaves a sick rung."""

from __future__ import annotations

from enum import StrEnum


class Impact(StrEnum):
    REVENUE_CRITICAL = "revenue_critical"
    CUSTOMER_FACING = "customer_facing"
    ASYNC_ACCEPTABLE = "async_acceptable"
    DEFERRABLE = "deferrable"
