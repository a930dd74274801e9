"""Studio sessions and CSRF tokens.

A browser signs in by showing an API key once; the studio then keeps a session cookie that names the key's id (never
the key itself) and carries an HMAC-SHA-256 over its fields made with the installation's studio secret (32 random
bytes in `keys/studio-session.key`, mode 0600, made on first start). Each request re-reads the key, so revoking it or
its expiry ends every session made with it at once. A visitor who has not signed in gets a session too (no key id),
so the sign-in form itself is protected against cross-site posting.

The CSRF token of a session is HMAC(secret, "csrf|" + the session's random nonce): it is tied to the session, a new
sign-in makes a new nonce (so a token seen before sign-in is worthless after), and it is checked in one place (the
studio router's dependency `tally.studio.pages.check_csrf`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "tally_studio"
VERSION = "v1"
SECRET_FILE = "studio-session.key"


def load_or_create_secret(keys_dir: Path) -> bytes:
    """The studio's session secret (32 bytes, mode 0600), created when missing."""
    path = keys_dir / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"studio session key {path} has mode {mode:o}; run `chmod 600 {path}`") from None
        secret = path.read_bytes()
        if len(secret) != 32:
            raise ValueError(f"studio session key {path} is not 32 bytes; delete it to make a new one") from None
        return secret
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class BrowserSession:
    nonce: str  # random, per sign-in: the CSRF token is derived from it
    key_id: str | None  # the API key this browser signed in with; None: not signed in
    issued: int  # unix seconds

    def encode(self, secret: bytes) -> str:
        body = f"{VERSION}.{self.nonce}.{self.key_id or '-'}.{self.issued}"
        return f"{body}.{_mac(secret, body)}"

    @classmethod
    def decode(cls, secret: bytes, value: str, max_age_s: float) -> BrowserSession | None:
        """The session a cookie holds, or None when it is malformed, forged or older than `max_age_s`."""
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != VERSION or not parts[3].isdigit():
            return None
        body = ".".join(parts[:4])
        if not hmac.compare_digest(parts[4], _mac(secret, body)):
            return None
        issued = int(parts[3])
        if not 0 <= time.time() - issued <= max_age_s:
            return None
        return cls(parts[1], None if parts[2] == "-" else parts[2], issued)

    @classmethod
    def new(cls, key_id: str | None = None) -> BrowserSession:
        return cls(secrets.token_urlsafe(18), key_id, int(time.time()))

    def csrf_token(self, secret: bytes) -> str:
        return _mac(secret, f"csrf|{self.nonce}")


def _mac(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())


def same_token(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
