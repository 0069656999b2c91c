"""The one input-error base of hwsearch, and the search-space vocabulary's own error.

Every error a user can cause by what they typed, sent or configured is an ``InputError``: it
carries the ``field`` (a JSON-path-like location, an option or a variable), the ``value``
that was given and a ``hint`` saying what is allowed. The CLI maps it to exit code 2 in one
place and the API to a 422 in one handler, so a package never formats its own exit codes or
HTTP statuses. Each package subclasses it (``SpaceError``, ``LatencyModelError``,
``SearchError``, ``ZooError``, ``SettingsError``) only to say where the error comes from.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InputError", "SpaceError"]


class InputError(ValueError):
    """Bad user input: names the field, the value given and what would be accepted.

    ``str(error)`` is ``"<field>: got <value!r>; <hint>"`` unless a subclass formats it
    differently in ``_format``; the three parts stay available as attributes.
    """

    def __init__(self, field: str, value: Any, hint: str) -> None:
        self.field = field
        self.value = value
        self.hint = hint
        super().__init__(self._format(field, value, hint))

    @staticmethod
    def _format(field: str, value: Any, hint: str) -> str:
        return f"{field}: got {value!r}; {hint}"

    @property
    def allowed(self) -> str:
        """The hint, under the name the vocabulary's errors used first."""
        return self.hint


class SpaceError(InputError):
    """Bad user input in a LayerSpec, Choice, Plan or Space."""
