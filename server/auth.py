"""Static bearer tokens with names, for the HTTP transport.

Tokens come from ``KFOUNDRY_TOKENS`` ("alice:tok1,bob:tok2"), ``KFOUNDRY_TOKEN`` (one token,
named "default") or a file of ``name token`` / ``name:token`` lines. A token's name owns the
runs its calls make; no token may be named "local", the box's own user, who sees every run.
Every presented token is compared with every known one in constant time, so timing reveals
neither which token nor how much of it matched.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings

from kfoundry.artifacts import LOCAL
from kfoundry.errors import BadRequest

SCOPE = "kfoundry"
MIN_TOKEN_LENGTH = 16


def _parse_line(line: str, default_name: str) -> tuple[str, str] | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    for sep in (":", " ", "\t"):
        if sep in line:
            name, token = line.split(sep, 1)
            return name.strip(), token.strip()
    return default_name, line


def load_tokens(token_file: Path | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Name -> token. Raises BadRequest for short or duplicate tokens, and for a token named "local"."""
    env = os.environ if environ is None else environ
    pairs: list[tuple[str, str]] = []
    if env.get("KFOUNDRY_TOKEN"):
        pairs.append(("default", env["KFOUNDRY_TOKEN"].strip()))
    for item in env.get("KFOUNDRY_TOKENS", "").split(","):
        parsed = _parse_line(item, "default")
        if parsed:
            pairs.append(parsed)
    if token_file is not None:
        for number, line in enumerate(token_file.read_text().splitlines(), start=1):
            parsed = _parse_line(line, f"line{number}")
            if parsed:
                pairs.append(parsed)
    tokens: dict[str, str] = {}
    for name, token in pairs:
        if name == LOCAL:
            raise BadRequest(f"the token name {LOCAL!r} is reserved for the box's own user (stdio, the CLI), who sees every run; pick another name")
        if len(token) < MIN_TOKEN_LENGTH:
            raise BadRequest(f"token {name!r} is shorter than {MIN_TOKEN_LENGTH} characters; use e.g. `openssl rand -hex 24`")
        if token in tokens.values():
            raise BadRequest(f"token {name!r} duplicates another token")
        tokens[name] = token
    return tokens


class NamedTokenVerifier(TokenVerifier):
    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = [(name, token.encode()) for name, token in tokens.items()]

    async def verify_token(self, token: str) -> AccessToken | None:
        presented = token.encode()
        found = None
        for name, known in self._tokens:
            if hmac.compare_digest(presented, known) and found is None:
                found = name
        if found is None:
            return None
        return AccessToken(token=token, client_id=found, scopes=[SCOPE])


def auth_settings() -> AuthSettings:
    # resource_server_url=None: a static token must not advertise an OAuth flow nobody can complete.
    return AuthSettings(issuer_url="https://kfoundry.invalid", resource_server_url=None, required_scopes=[SCOPE])


def caller() -> str:
    """The token name of the current HTTP caller, or ``LOCAL`` on stdio and in-memory."""
    token = get_access_token()
    return token.client_id if token is not None else LOCAL
