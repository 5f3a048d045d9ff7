"""Bearer tokens and their scopes: who may call which routes.

    inference       V2 infer, :predict, gRPC ModelInfer / ModelStreamInfer; asked for only
                    with --require-inference-token (MLGATE_REQUIRE_INFERENCE_TOKEN)
    features:write  POST /v1/features/{view}; open while no token at all is configured (the demo)
    feedback        POST /v1/feedback (true labels); open while no token at all is configured.
                    A scope of its own, not inference's: labels move quality gauges and can
                    roll a canary back, and they come from other systems than predictions do
    admin           /admin/...; refused to everyone while no token is configured

Tokens come from MLGATE_ADMIN_TOKEN (named "admin", scope admin) and --admin-token-file, one
token a line: `name:token:scope,scope`, or as before `name:token` and a bare token (named by
its line), which both mean admin, so token files written before scopes keep their meaning.
Tokens cannot hold ':' in the three-field form; a third field that is not a list of known
scopes stops the process at start rather than being read as part of a token.

A missing or malformed `Authorization: Bearer` header is Unauthenticated (401,
UNAUTHENTICATED); a token that is none of the configured ones, or lacks the scope, is
Forbidden (403, PERMISSION_DENIED). Neither says which.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from service.settings import Settings

INFERENCE: Final = "inference"
FEATURES_WRITE: Final = "features:write"
FEEDBACK: Final = "feedback"
ADMIN: Final = "admin"
SCOPES: Final = (INFERENCE, FEATURES_WRITE, FEEDBACK, ADMIN)


class Unauthenticated(Exception):
    """No bearer token, or not one."""


class Forbidden(Exception):
    """A bearer token that is none of the configured ones, or lacks the scope asked for."""


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    # sha256 of the token: equal-length digests make compare_digest take the same time
    # whatever the guess.
    digest: bytes
    scopes: frozenset[str]


class Tokens:
    """The configured tokens; `check` answers who holds a scope."""

    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens

    @classmethod
    def load(cls, settings: Settings) -> Tokens:
        """The tokens of MLGATE_ADMIN_TOKEN and --admin-token-file; ValueError naming the line
        of a malformed one (never the token itself)."""
        found: list[Token] = []
        if settings.admin_token:
            found.append(Token("admin", _digest(settings.admin_token), frozenset({ADMIN})))
        if settings.admin_token_file is not None:
            path = settings.admin_token_file
            for number, line in enumerate(path.read_text().splitlines(), 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    token = _parse_line(line, f"line{number}", f"{path}:{number}")
                    if token is not None:
                        found.append(token)
        tokens = cls(found)
        if settings.require_inference_token and not tokens.any_with(INFERENCE):
            raise ValueError(
                "require_inference_token is set, but no configured token has the "
                f"'{INFERENCE}' scope: every inference call would be refused"
            )
        return tokens

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def any_with(self, scope: str) -> bool:
        return any(scope in token.scopes for token in self._tokens)

    def check(self, authorization: str | None, scope: str) -> str:
        """The name of the token in `authorization` (the header's value) if it has `scope`;
        Unauthenticated or Forbidden otherwise."""
        scheme, _, given = (authorization or "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise Unauthenticated()
        digest = _digest(given)
        found: Token | None = None
        # Every token is compared, so the time taken says nothing about which one matched.
        for token in self._tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        if found is None or scope not in found.scopes:
            raise Forbidden()
        return found.name


def _parse_line(line: str, default_name: str, where: str) -> Token | None:
    # Scopes may hold ':' (features:write); names and tokens may not.
    fields = line.split(":", 2)
    if len(fields) == 1:
        return Token(default_name, _digest(line), frozenset({ADMIN}))
    name, token = fields[0].strip(), fields[1].strip()
    scopes = frozenset({ADMIN})
    if len(fields) == 3:
        named = [s.strip() for s in fields[2].split(",") if s.strip()]
        unknown = [s for s in named if s not in SCOPES]
        if unknown or not named:
            # The field is not echoed: on a line of the old form it is the end of a token.
            raise ValueError(
                f"{where}: scopes must be a comma-separated list of {', '.join(SCOPES)} "
                "(names and tokens cannot hold ':')"
            )
        scopes = frozenset(named)
    return Token(name, _digest(token), scopes) if token else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
