"""Who wrote an artifact: its manifest's checksum signed with a shared key (HMAC-SHA256) or an Ed25519 key pair.

A shared key signs and verifies alike, so every reader could also forge. With a key pair only the writers (the
training and distillation jobs) hold the private key; serving machines hold the public key, which can verify but
never sign. Keys come from the environment of whoever saves or loads:

    DIEN_ARTIFACT_KEY / DIEN_ARTIFACT_KEY_FILE   the shared key, or a file holding it
    DIEN_ARTIFACT_SIGNING_KEY_FILE               an Ed25519 private key, PEM, unencrypted (writers)
    DIEN_ARTIFACT_PUBLIC_KEY_FILE                its public key, PEM (readers; writers verify with the
                                                 private key's own public key when this is unset)

Both kinds may be configured at once: an artifact then carries both signatures and loading requires both.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_ENV, KEY_FILE_ENV = "DIEN_ARTIFACT_KEY", "DIEN_ARTIFACT_KEY_FILE"
PRIVATE_KEY_FILE_ENV, PUBLIC_KEY_FILE_ENV = "DIEN_ARTIFACT_SIGNING_KEY_FILE", "DIEN_ARTIFACT_PUBLIC_KEY_FILE"
HMAC_FIELD, ED25519_FIELD = "signature", "ed25519_signature"
SIGNATURE_FIELDS = (HMAC_FIELD, ED25519_FIELD)
"""The manifest's fields that hold signatures (left out of the checksum they sign)."""


class SignatureError(Exception):
    """A key that cannot be read, or a manifest whose signature is missing or wrong."""


def _read_key_file(variable: str) -> bytes:
    path = Path(os.environ[variable])
    try:
        data = path.read_bytes().strip()
    except OSError as error:
        raise SignatureError(f"{path} (from {variable}): cannot be read ({error.strerror})") from None
    if not data:
        raise SignatureError(f"{path} (from {variable}): the key file is empty")
    return data


def _hmac_sha256(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def _load_key(variable: str, private: bool) -> Ed25519PrivateKey | Ed25519PublicKey:
    """The Ed25519 key (private or public) in the PEM file that ``variable`` names."""
    data = _read_key_file(variable)
    try:
        key = serialization.load_pem_private_key(data, password=None) if private else \
            serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        expected = "an unencrypted PEM private key" if private else "a PEM public key"
        raise SignatureError(f"{os.environ[variable]} (from {variable}): not {expected} ({error})") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise SignatureError(f"{os.environ[variable]} (from {variable}): a {type(key).__name__}, not an Ed25519 key")
    return key


@dataclass(frozen=True)
class ArtifactKeys:
    """The keys artifacts are signed with when saved and verified against when loaded."""

    shared: bytes | None = None
    private: Ed25519PrivateKey | None = None
    public: Ed25519PublicKey | None = None

    @classmethod
    def from_environment(cls) -> ArtifactKeys:
        shared = os.environ[KEY_ENV].encode() if os.environ.get(KEY_ENV) else None
        if shared is None and os.environ.get(KEY_FILE_ENV):
            shared = _read_key_file(KEY_FILE_ENV)
        private = _load_key(PRIVATE_KEY_FILE_ENV, private=True) if os.environ.get(PRIVATE_KEY_FILE_ENV) else None
        if os.environ.get(PUBLIC_KEY_FILE_ENV):
            public = _load_key(PUBLIC_KEY_FILE_ENV, private=False)
        else:
            public = private.public_key() if private is not None else None
        return cls(shared, private, public)

    def sign(self, digest: str) -> dict[str, str]:
        """The signature fields of a manifest whose checksum is ``digest`` (none without a key)."""
        fields = {}
        if self.shared is not None:
            fields[HMAC_FIELD] = _hmac_sha256(self.shared, digest)
        if self.private is not None:
            fields[ED25519_FIELD] = self.private.sign(digest.encode()).hex()
        return fields

    def verify(self, manifest: Mapping[str, Any], digest: str) -> None:
        """Raise :class:`SignatureError` unless ``manifest`` carries a valid signature of ``digest`` for every
        configured key."""
        if self.shared is not None:
            signature = manifest.get(HMAC_FIELD)
            if not isinstance(signature, str):
                raise SignatureError("not signed, and a signing key is configured")
            if not hmac.compare_digest(signature, _hmac_sha256(self.shared, digest)):
                raise SignatureError("signature mismatch: signed with another key, or forged")
        if self.public is not None:
            signature = manifest.get(ED25519_FIELD)
            if not isinstance(signature, str):
                raise SignatureError("no Ed25519 signature, and a public key is configured")
            try:
                self.public.verify(bytes.fromhex(signature), digest.encode())
            except (ValueError, InvalidSignature):
                raise SignatureError("Ed25519 signature mismatch: signed with another key, or forged") from None
