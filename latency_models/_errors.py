"""The error type of latency models: bad target definitions and unknown names."""

from __future__ import annotations

from typing import Any


class LatencyModelError(ValueError):
    """Bad user input to a latency model; names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; {allowed}")
