"""The limits on what a user may send, in one place, and the one strict pattern for names.

Every list and string a user controls has a cap, and every name that becomes part of a file
path (targets, schedules, datasets) passes ``check_name``: the service, the latency models'
catalogue and the search specs all check against these constants, so a cap is changed here
and nowhere else. Errors name the field, the value (or its length) and the cap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sized
from typing import Any

from ._errors import InputError

__all__ = [
    "MAX_CHOICES",
    "MAX_CONSTRAINTS",
    "MAX_NAME_CHARS",
    "MAX_PATTERNS",
    "MAX_PATTERN_CHARS",
    "MAX_TARGETS",
    "MAX_TEXT_CHARS",
    "MAX_WALL_TIME_S",
    "NAME_HINT",
    "NAME_PATTERN",
    "BadName",
    "LimitError",
    "check_finite",
    "check_length",
    "check_name",
    "is_name",
]

#: Values one knob may offer (``rank_fractions``, ``keep``, ``wbits``, ...): a space is the
#: product of its knobs over every layer, so dozens already make it astronomically large.
MAX_CHOICES = 64
#: Glob patterns in a space's ``include`` / ``exclude`` (a model has at most a few hundred layers).
MAX_PATTERNS = 1000
#: Characters of one glob pattern or other free-text identifier (a strategy name, a layer glob).
MAX_PATTERN_CHARS = 200
#: Targets one search is costed on.
MAX_TARGETS = 8
#: Hard constraints of one search.
MAX_CONSTRAINTS = 64
#: Characters of a free-text field that is stored and shown back (a description).
MAX_TEXT_CHARS = 2000
#: The longest wall-time budget a search may ask for: 7 days, so every budget ends.
MAX_WALL_TIME_S = 7 * 24 * 3600.0
#: Characters of a name (target, schedule, dataset).
MAX_NAME_CHARS = 64

#: A name: ASCII letters, digits, '-', '_' and '.', starting with a letter or digit, with no
#: '..' anywhere (so never '.' or '..'), at most MAX_NAME_CHARS long (checked apart: the pattern
#: has no lookaround, so pydantic's and JSON Schema's regex engines read it as Python's does).
NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
NAME_HINT = (
    f"1 to {MAX_NAME_CHARS} ASCII letters, digits, '-', '_' and '.', starting with a letter or "
    "digit and with no '..', e.g. 'my-board_v2.1'"
)
_NAME = re.compile(NAME_PATTERN)


class LimitError(InputError):
    """A value over one of the caps above, or a number that is not finite."""


class BadName(InputError):
    """A name that does not match ``NAME_PATTERN`` (it would not be a safe file name)."""


def is_name(value: Any) -> bool:
    """Whether ``value`` is a valid name (see ``NAME_PATTERN``)."""
    # fullmatch: Python's '$' also matches before a trailing newline.
    return isinstance(value, str) and len(value) <= MAX_NAME_CHARS and _NAME.fullmatch(value) is not None


def check_name(field: str, value: Any) -> str:
    """``value`` when it is a valid name; else ``BadName`` naming ``field``.

    Call it wherever a name becomes (part of) a path: a name that passes cannot leave its
    folder, hide a file, or differ from another only in Unicode look-alikes.
    """
    if not isinstance(value, str):
        raise BadName(field, value, f"a string is required: {NAME_HINT}")
    if len(value) > MAX_NAME_CHARS:
        # The length, not the whole value: an error message must not echo a huge input.
        raise BadName(field, f"{value[:20]}... ({len(value)} characters)", NAME_HINT)
    if _NAME.fullmatch(value) is None:
        raise BadName(field, value, NAME_HINT)
    return value


def check_length(field: str, value: Sized, cap: int, unit: str = "items") -> None:
    """``LimitError`` naming ``field``, the length and ``cap`` when ``len(value) > cap``
    (``unit``: what is counted, for the message: "items", "characters")."""
    if len(value) > cap:
        raise LimitError(field, f"{len(value)} {unit}", f"at most {cap} {unit} are allowed")


def check_finite(field: str, value: Any) -> float:
    """``value`` as a float when it is a finite real number (not a bool); else ``LimitError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LimitError(field, value, "a finite number is required (not NaN or Infinity)")
    return float(value)
