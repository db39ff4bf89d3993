"""Who is calling: bearer tokens and the principal each one stands for.

A tokens file (or the PIRM_TOKENS variable) has one `role name token` line per caller:

    team       alpha     <token>   # submits and sees the jobs of team alpha
    organiser  jury      <token>   # sees every job, sets MOS values
    internal   scorer    <token>   # the scorer (and batch shards) calling inference and metrics

Only SHA-256 digests of the tokens are kept in memory for the lookup; the internal token is
kept in clear too, because the scorer sends it. No gRPC here: the interceptor that reads the
`authorization` metadata lives in interceptors.py.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from services.core.errors import InvalidArgument, PermissionDenied

MIN_TOKEN_LENGTH = 16  # shorter tokens can be guessed by a patient client


class Role(Enum):
    TEAM = "team"
    ORGANISER = "organiser"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Principal:
    role: Role
    name: str

    @property
    def is_team(self) -> bool:
        return self.role is Role.TEAM

    def __str__(self) -> str:
        return f"{self.role.value} {self.name}"


# The inference and metrics services serve the scorer (and batch shards) only.
INTERNAL_ONLY = frozenset({Role.INTERNAL})
# The caller of a server with authentication disabled (--insecure-dev, loopback only).
DEVELOPER = Principal(Role.ORGANISER, "insecure-dev")

_caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller")


def caller() -> Principal:
    """The principal of the call being handled (set by the auth interceptor)."""
    try:
        return _caller.get()
    except LookupError:
        raise PermissionDenied("no authenticated caller for this call") from None


def set_caller(principal: Principal) -> contextvars.Token[Principal]:
    return _caller.set(principal)


def reset_caller(token: contextvars.Token[Principal]) -> None:
    _caller.reset(token)


def require_role(principal: Principal, roles: Iterable[Role], action: str) -> None:
    allowed = set(roles)
    if principal.role not in allowed:
        names = " or ".join(r.value for r in Role if r in allowed)  # in the enum's order
        raise PermissionDenied(f"{action} is allowed to {names} tokens only; this one is "
                               f"{principal}'s")


def _fields(line: str) -> list[str]:
    """The fields of one tokens-file line, comments dropped."""
    return line.split("#", 1)[0].split()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Tokens:
    """The accepted tokens, by digest, and the scorer's own internal token."""

    principals: tuple[tuple[bytes, Principal], ...]
    internal_token: str | None = None

    def principal(self, token: str) -> Principal | None:
        """The principal of `token`; every digest is compared, in constant time each."""
        digest, found = _digest(token), None
        for known, principal in self.principals:
            if hmac.compare_digest(known, digest):
                found = principal
        return found

    @classmethod
    def parse(cls, text: str, origin: str) -> Tokens:
        """Tokens from `role name token` lines; InvalidArgument saying which line is wrong."""
        principals: list[tuple[bytes, Principal]] = []
        seen: set[bytes] = set()
        internal = None
        for number, line in enumerate(text.splitlines(), start=1):
            fields = _fields(line)
            if not fields:
                continue
            where = f"{origin} line {number}"
            if len(fields) != 3:
                raise InvalidArgument(f"{where}: expected `role name token`, got {len(fields)} "
                                      "fields")
            role_name, name, token = fields
            try:
                role = Role(role_name)
            except ValueError:
                raise InvalidArgument(f"{where}: role must be team, organiser or internal, "
                                      f"not {role_name!r}") from None
            if len(token) < MIN_TOKEN_LENGTH:
                raise InvalidArgument(f"{where}: a token needs at least {MIN_TOKEN_LENGTH} "
                                      "characters (make one with `pirm token`)")
            digest = _digest(token)
            if digest in seen:
                raise InvalidArgument(f"{where}: this token is already given to another caller")
            seen.add(digest)
            principals.append((digest, Principal(role, name)))
            if role is Role.INTERNAL and internal is None:
                internal = token
        if not principals:
            raise InvalidArgument(f"{origin} has no tokens")
        return cls(tuple(principals), internal)

    def roles(self) -> set[Role]:
        return {principal.role for _, principal in self.principals}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def load_tokens(path: Path | None, inline: str = "") -> Tokens | None:
    """Tokens from a file, else from the text of PIRM_TOKENS; None when neither is given."""
    if path is not None:
        try:
            text = path.read_text()
        except OSError as error:
            raise InvalidArgument(f"cannot read the tokens file {path}: {error.strerror}") from None
        return Tokens.parse(text, str(path))
    if inline.strip():
        return Tokens.parse(inline.replace(";", "\n"), "PIRM_TOKENS")
    return None


def write_tokens_file(path: Path, entries: Iterable[tuple[Role, str]]) -> dict[Role, str]:
    """Creates a tokens file readable by its owner only, with a new token per entry; returns
    the token of the first entry of each role."""
    path.parent.mkdir(parents=True, exist_ok=True)
    first: dict[Role, str] = {}
    lines = []
    for role, name in entries:
        token = new_token()
        first.setdefault(role, token)
        lines.append(f"{role.value} {name} {token}\n")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.writelines(lines)
    return first


def token_of(tokens_file: Path, role: Role, name: str = "") -> str | None:
    """The token in clear of the first `role` line (of that `name`, if given) of a tokens file
    (for local clients)."""
    for line in tokens_file.read_text().splitlines():
        fields = _fields(line)
        if len(fields) == 3 and fields[0] == role.value and fields[1] == (name or fields[1]):
            return fields[2]
    return None
