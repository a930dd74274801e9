"""Checkpoints in the C2SP signed-note format, signed with Ed25519.

    <origin>\n<size>\n<base64 root>\n\n— <key name> <base64(key id || signature)>\n

The key id is the first 4 bytes of SHA-256(name || "\\n" || 0x01 || public key); the verifier key string is
`name+hex(key id)+base64(0x01 || public key)`, as in the note specification.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tally.config.errors import TallyError

ED25519_ALG = b"\x01"
SIG_PREFIX = "\u2014 "


class NoteError(TallyError, ValueError):
    """A note or checkpoint is malformed or its signature does not verify (invalid); a bad log key file is the
    server's own fault (raised with kind="internal")."""


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALG + public_key).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def encode(self) -> str:
        blob = base64.b64encode(ED25519_ALG + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        try:
            name, hex_id, blob = text.strip().split("+", 2)
            raw = base64.b64decode(blob, validate=True)
        except ValueError as exc:
            raise NoteError(f"verifier key {text!r} is not NAME+KEYID+BASE64") from exc
        if len(raw) != 33 or raw[:1] != ED25519_ALG:
            raise NoteError("verifier key is not an Ed25519 key")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != hex_id:
            raise NoteError("verifier key id does not match its name and key")
        return verifier

    def verify(self, note: str) -> str:
        """Check this key's signature on `note`; return the signed text."""
        text, sep, sigs = note.partition("\n\n")
        if not sep or not text:
            raise NoteError("note has no signature block")
        text += "\n"
        for line in sigs.splitlines():
            if not line.startswith(SIG_PREFIX):
                raise NoteError(f"malformed signature line {line!r}")
            name, _, blob = line[len(SIG_PREFIX) :].rpartition(" ")
            if name != self.name:
                continue
            try:
                raw = base64.b64decode(blob, validate=True)
            except ValueError as exc:
                raise NoteError("signature is not base64") from exc
            if raw[:4] != self.key_id:
                continue
            try:
                Ed25519PublicKey.from_public_bytes(self.public_key).verify(raw[4:], text.encode())
            except InvalidSignature as exc:
                raise NoteError(f"signature by {self.name} does not verify") from exc
            return text
        raise NoteError(f"note carries no signature by {self.name} ({self.key_id.hex()})")


class Signer:
    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = name
        self._key = private_key
        self.verifier = Verifier(name, private_key.public_key().public_bytes_raw())

    def sign(self, text: str) -> str:
        if not text.endswith("\n") or "\n\n" in text:
            raise NoteError("note text must end in one newline and hold no blank line")
        sig = self._key.sign(text.encode())
        blob = base64.b64encode(self.verifier.key_id + sig).decode()
        return f"{text}\n{SIG_PREFIX}{self.name} {blob}\n"


def load_or_create_signer(path: Path, name: str) -> Signer:
    """The log key at `path` (raw 32-byte seed, mode 0600), created on first use."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"log key {path} has mode {mode:o}; run `chmod 600 {path}`")
        seed = path.read_bytes()
        if len(seed) != 32:
            raise NoteError(f"log key {path} is not a 32-byte Ed25519 seed", kind="internal")
        return Signer(name, Ed25519PrivateKey.from_private_bytes(seed))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    return Signer(name, key)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse_text(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("checkpoint needs origin, size and root lines")
        origin, size_s, root_b64 = lines[0], lines[1], lines[2]
        if not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
            raise NoteError(f"checkpoint size {size_s!r} is not a decimal number")
        try:
            root = base64.b64decode(root_b64, validate=True)
        except ValueError as exc:
            raise NoteError("checkpoint root is not base64") from exc
        if len(root) != 32:
            raise NoteError("checkpoint root is not 32 bytes")
        return cls(origin, int(size_s), root)


def open_checkpoint(note: str, verifier: Verifier, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note and parse it."""
    checkpoint = Checkpoint.parse_text(verifier.verify(note))
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    return checkpoint
