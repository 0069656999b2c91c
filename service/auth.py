"""Who may do what: principals (the owner and scopes a token carries) and the rules on objects.

A token belongs to an *owner* (a person or a team's robot) and carries *scopes*:

- ``read``: list and read jobs, schedules, targets and fits (needed only when reads are closed);
- ``write``: create jobs, schedules, targets, uploads; change and delete *its owner's* objects;
- ``admin``: everything, on anyone's objects, and what is shared by everyone: replacing the
  active predictor of a target nobody owns (the built-in ones), or fitting one for it.

``write`` implies ``read``; ``admin`` implies both. The first token of a database is an admin
token, so a single-token set-up keeps working as before. Objects created before owners existed
have none: only an admin may change them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from search_spaces import InputError

__all__ = [
    "ALL_SCOPES",
    "COOKIE",
    "Principal",
    "TokenError",
    "check_owner",
    "may_change",
    "parse_expiry",
    "parse_scopes",
]

#: The scopes, weakest first; each implies the ones before it.
ALL_SCOPES = ("read", "write", "admin")
#: The dashboard's login cookie (HttpOnly, SameSite=Strict): the token, as a Bearer header would carry it.
COOKIE = "hwsearch_token"
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TokenError(InputError):
    """A token's owner, scopes or expiry is not valid."""


@dataclass(frozen=True)
class Principal:
    """The owner and scopes of the token a request carried."""

    token_id: int
    owner: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        """Whether the token grants ``scope`` (admin implies write implies read)."""
        return ALL_SCOPES.index(scope) <= max((ALL_SCOPES.index(s) for s in self.scopes), default=-1)

    @property
    def is_admin(self) -> bool:
        return self.has("admin")


def may_change(principal: Principal | None, owner: str | None) -> bool:
    """Whether ``principal`` may change or delete an object of ``owner`` (None: nobody's)."""
    if principal is None or not principal.has("write"):
        return False
    return principal.is_admin or (owner is not None and owner == principal.owner)


def check_owner(owner: str) -> str:
    """``owner`` if it is a valid owner name (ASCII letters, digits, ``._@-``; up to 64)."""
    if not _OWNER.match(owner):
        raise TokenError(
            "owner",
            owner,
            "1-64 ASCII letters, digits, '.', '_', '@' or '-', starting with a letter or digit",
        )
    return owner


def parse_scopes(text: str) -> frozenset[str]:
    """``read,write`` → the scopes; every name must be one of :data:`ALL_SCOPES`."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in ALL_SCOPES]
    if not names or unknown:
        raise TokenError("scopes", text, f"a comma-separated list of {', '.join(ALL_SCOPES)}")
    return frozenset(names)


_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` → how long a token lives."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise TokenError("expires", text, "a positive duration such as 30d, 12h, 90m or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])
