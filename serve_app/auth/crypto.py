"""The master key and the sealing of agent secrets at rest (AES-256-GCM).

The server must hold each agent's HMAC secret itself (it recomputes the MAC), so secrets are stored
encrypted under a master key that lives outside the database: an environment variable or a secrets file.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from serve_app.auth.secret import Secret
from serve_app.auth.settings import AuthSettings

MASTER_KEY_BYTES = 32
_VERSION = b"\x01"  # leading byte of every sealed value, so the format can change later
_NONCE_BYTES = 12
_HOW_TO_MAKE = 'generate one with `python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"`'


class MasterKeyError(RuntimeError):
    """The master key is missing, malformed, or does not open a stored secret."""


def generate_master_key() -> str:
    """A fresh master key as standard base64 text, the form :func:`load_master_key` reads."""
    return base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode("ascii")


def load_master_key(settings: AuthSettings, environ: Mapping[str, str] | None = None) -> Secret:
    """Read the master key from ``settings.master_key_file`` if set, else from ``settings.master_key_env``.

    This is the one place the auth layer reads the environment; everything else receives the key.
    """
    if settings.master_key_file is not None:
        try:
            text = settings.master_key_file.read_text(encoding="ascii")
        except OSError as exc:
            raise MasterKeyError(f"cannot read master key file {settings.master_key_file}: {exc}") from exc
        source = f"file {settings.master_key_file}"
    else:
        env = os.environ if environ is None else environ
        if not env.get(settings.master_key_env):
            raise MasterKeyError(f"environment variable {settings.master_key_env} is not set; {_HOW_TO_MAKE}")
        text = env[settings.master_key_env]
        source = f"environment variable {settings.master_key_env}"
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError(f"master key in {source} is not standard base64; {_HOW_TO_MAKE}") from exc
    if len(raw) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"master key in {source} is {len(raw)} bytes, expected {MASTER_KEY_BYTES}; {_HOW_TO_MAKE}")
    return Secret(raw)


def seal(master_key: Secret, plaintext: Secret, *, context: bytes) -> bytes:
    """Encrypt ``plaintext``; ``context`` (the key id) is authenticated, so a sealed value cannot be
    moved to another row and still open."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _VERSION + nonce + AESGCM(master_key.reveal()).encrypt(nonce, plaintext.reveal(), context)


def unseal(master_key: Secret, sealed: bytes, *, context: bytes) -> Secret:
    if sealed[:1] != _VERSION:
        raise MasterKeyError("stored secret has an unknown format version")
    nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
    try:
        return Secret(AESGCM(master_key.reveal()).decrypt(nonce, ciphertext, context))
    except InvalidTag as exc:
        raise MasterKeyError(
            "a stored agent secret does not open with this master key; the server runs with a different "
            "ORFEAS master key than the one the keys were created with"
        ) from exc
