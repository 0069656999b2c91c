"""The error of a dataset, a preprocessing setting or an evaluator that cannot be used."""

from __future__ import annotations

from search_spaces import InputError

__all__ = ["DatasetError"]


class DatasetError(InputError):
    """Bad user data or data settings: names the field, the value (often a file) and the fix."""
