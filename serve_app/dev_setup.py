"""Dev mode (the embedded default): make the service usable on a fresh machine without any setup.

On first start it creates a master key file and a development agent key, and writes the key for the
agent to `<data_dir>/dev-agent.json` (mode 0600). Production configs never run this: keys come from
`orfeas keys create`, the master key from the environment or a secrets file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.auth.crypto import generate_master_key, load_master_key
from serve_app.auth.keys import KeyStore
from serve_app.config import AppConfig

logger = logging.getLogger("orfeas.dev")

DEV_AGENT = "dev-agent"
# Least privilege even in dev: critical priority (jumping the queue) needs a key made for it.
DEV_SCOPES = ("jobs:read", "jobs:write")


def _private_temp(path: Path, text: str) -> Path:
    """A new file beside ``path`` holding ``text``: mkstemp opens it O_EXCL with mode 0600, so nobody else
    can have created, linked or read it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return Path(temp)


def write_private(path: Path, text: str) -> None:
    """Create or replace ``path``, readable by the owner only (never world-readable, not even briefly)."""
    os.replace(_private_temp(path, text), path)


def create_private(path: Path, text: str) -> bool:
    """Create ``path`` (mode 0600) holding ``text`` unless it exists; False if it did.

    ``link`` is the atomic create-if-absent: the ingress and the workers start together in dev mode, and a
    reader must never see a half-written master key.
    """
    temp = _private_temp(path, text)
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    finally:
        temp.unlink()


async def prepare_dev_mode(config: AppConfig, engine: AsyncEngine) -> AppConfig:
    """Returns the config with the dev master key file in place; creates the dev agent key if needed."""
    auth = config.auth
    if auth.master_key_file is None and not os.environ.get(auth.master_key_env):
        key_file = config.dev_master_key_file
        if create_private(key_file, generate_master_key()):
            logger.warning("dev mode: created master key %s (production reads it from the environment)", key_file)
        config = config.model_copy(update={"auth": auth.model_copy(update={"master_key_file": key_file})})
    keys = KeyStore(engine, load_master_key(config.auth), env="dev")
    if await _dev_key_still_valid(config.dev_key_file, keys):
        return config
    material = await keys.create(DEV_AGENT, scopes=DEV_SCOPES)
    write_private(
        config.dev_key_file,
        json.dumps(
            {"key_id": material.info.key_id, "secret": material.secret_b64(), "url": config.public_url}, indent=2
        )
        + "\n",
    )
    logger.warning("dev mode: created agent key %s in %s", material.info.key_id, config.dev_key_file)
    return config


async def _dev_key_still_valid(path: Path, keys: KeyStore) -> bool:
    try:
        key_id = json.loads(path.read_text())["key_id"]
    except (OSError, ValueError, KeyError):
        return False
    return (await keys.lookup(key_id)).status == "active"


# the image the ready line suggests, when the service runs from a checkout (tests/fixtures is not packaged)
_TRY_IMAGE = Path("tests") / "fixtures" / "images" / "object_rgba.png"
_CHECKOUT = Path(__file__).resolve().parents[1]


def ready_line(config: AppConfig) -> str:
    """The one line a person starting the service needs: where it listens and, in dev mode, how to try it.

    Paths inside the checkout are shown relative to it (where `make serve` runs); ``--key-file`` is left
    out when the key is where `orfeas agent` looks by default (``.orfeas/dev-agent.json``).
    """
    line = f"ORFEAS serve ready on {config.public_url}"
    if config.mode != "dev":
        return line
    key_file = _shown(config.dev_key_file)
    image = _TRY_IMAGE if (_CHECKOUT / _TRY_IMAGE).is_file() else Path("IMAGE.png")
    key_option = "" if key_file == Path(".orfeas") / "dev-agent.json" else f" --key-file {key_file}"
    return f"{line} - dev agent key: {key_file} - try: orfeas agent submit {image} --wait --out out/{key_option}"


def _shown(path: Path) -> Path:
    absolute = path.resolve()
    return absolute.relative_to(_CHECKOUT) if absolute.is_relative_to(_CHECKOUT) else absolute
