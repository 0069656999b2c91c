"""The one error type of the search-space vocabulary."""

from __future__ import annotations

from typing import Any


class SpaceError(ValueError):
    """Bad user input in a LayerSpec, Choice, Plan or Space.

    The message always names the field (a JSON-path-like location), the value that was
    given and what is allowed, so a user can fix the input without reading code.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; {allowed}")
