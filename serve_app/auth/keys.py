"""Agent keys: the ``agent_keys`` table and an async store to create, list, look up, revoke and rotate.

Secrets are 32 CSPRNG bytes, sealed with the master key before they reach the database and returned
in clear exactly once, by :meth:`KeyStore.create` / :meth:`KeyStore.rotate`.

Lookups of active keys may be cached for ``cache_ttl_s`` (the ingress does; the CLI does not): a signed
request then costs no key query and no unsealing. A revocation or rotation through the same store drops
the entries at once; one made by another process is seen within ``cache_ttl_s``.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import JSON, DateTime, LargeBinary, String, TypeDecorator, insert, select, update
from sqlalchemy.engine import Dialect, RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from serve_app.auth.crypto import seal, unseal
from serve_app.auth.network import IPNetwork, parse_cidr
from serve_app.auth.secret import Secret
from serve_app.db import Base

SECRET_BYTES = 32
MAX_ACTIVE_KEYS_PER_AGENT = 2
# Bound on cached keys: only active keys are cached, so made-up key ids cannot grow it.
_MAX_CACHED_KEYS = 1024

_AGENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_ENV = re.compile(r"[a-z0-9]{1,16}")

KeyStatus = Literal["active", "revoked", "expired"]


class KeyStoreError(ValueError):
    """A key operation that cannot be done as asked; the message names the fix."""


class _UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=dt.timezone.utc)


class AgentKeyRow(Base):
    __tablename__ = "agent_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent: Mapped[str] = mapped_column(String(64), index=True)
    # version || nonce || AES-GCM(master key, secret, aad=key_id); never the raw secret.
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    cidrs: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(_UtcDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(_UtcDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(_UtcDateTime, nullable=True)


# Every column but the sealed secret: listing and revoking never touch ciphertext.
_PUBLIC_COLUMNS = tuple(column for column in AgentKeyRow.__table__.c if column.name != "secret_sealed")


@dataclass(frozen=True)
class KeyInfo:
    """Everything about a key except its secret."""

    key_id: str
    agent: str
    scopes: tuple[str, ...]
    cidrs: tuple[IPNetwork, ...]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def status(self, now: dt.datetime) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_json(self, now: dt.datetime) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "agent": self.agent,
            "scopes": list(self.scopes),
            "cidrs": [str(network) for network in self.cidrs],
            "created_at": self.created_at.isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
            "status": self.status(now),
        }


@dataclass(frozen=True)
class KeyMaterial:
    """A key with its secret in clear (wrapped): what the verifier needs, and what creation returns once."""

    info: KeyInfo
    secret: Secret

    def secret_b64(self) -> str:
        """Standard base64 of the 32 raw bytes: the form agents configure and ``AgentSigner`` reads."""
        return base64.b64encode(self.secret.reveal()).decode("ascii")


@dataclass(frozen=True)
class KeyLookup:
    """A lookup by key id: ``material`` is set only for an active key; the status tells the log why not."""

    status: KeyStatus | Literal["unknown"]
    material: KeyMaterial | None = None
    info: KeyInfo | None = None


def _info(row: RowMapping) -> KeyInfo:
    return KeyInfo(
        key_id=row["key_id"],
        agent=row["agent"],
        scopes=tuple(row["scopes"]),
        cidrs=tuple(parse_cidr(text) for text in row["cidrs"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def _check(pattern: re.Pattern[str], value: str, what: str, example: str) -> str:
    if not pattern.fullmatch(value):
        raise KeyStoreError(f"{what} {value!r} is not valid; use letters, digits and . _ - (e.g. {example!r})")
    return value


class KeyStore:
    """Async access to ``agent_keys``. ``env`` names the deployment in new key ids: ``ak_<env>_<random>``."""

    def __init__(
        self,
        engine: AsyncEngine,
        master_key: Secret,
        *,
        env: str = "live",
        clock: Callable[[], float] = time.time,
        cache_ttl_s: float = 0.0,
    ) -> None:
        self._engine = engine
        self._master_key = master_key
        self._env = _check(_ENV, env, "key id environment", "live")
        self._clock = clock
        self._cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, KeyLookup]] = {}  # key id -> (looked up at, active lookup)

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)

    async def create(
        self,
        agent: str,
        *,
        scopes: Sequence[str] = (),
        cidrs: Sequence[str] = (),
        expires_in: dt.timedelta | None = None,
    ) -> KeyMaterial:
        """A new key for ``agent``; the returned secret is never retrievable again.

        The two-active-keys rule is checked and the row inserted in one transaction; two operators
        creating keys for the same agent at the same instant could still race (key creation is a rare,
        human-driven operation, so no table lock is taken).
        """
        _check(_AGENT, agent, "agent name", "render-bot")
        for scope in scopes:
            _check(_SCOPE, scope, "scope", "jobs:write")
        try:
            networks = [parse_cidr(text) for text in cidrs]
        except ValueError as exc:
            raise KeyStoreError(str(exc)) from exc
        if expires_in is not None and expires_in <= dt.timedelta(0):
            raise KeyStoreError("expiry must be in the future; give a positive number of days")
        async with self._engine.begin() as conn:
            return await self._insert(conn, agent, sorted(set(scopes)), networks, expires_in)

    async def _insert(
        self,
        conn: AsyncConnection,
        agent: str,
        scopes: list[str],
        networks: Sequence[IPNetwork],
        expires_in: dt.timedelta | None,
    ) -> KeyMaterial:
        now = self._now()
        active = [info for info in await self._agent_keys(conn, agent) if info.status(now) == "active"]
        if len(active) >= MAX_ACTIVE_KEYS_PER_AGENT:
            ids = ", ".join(info.key_id for info in active)
            raise KeyStoreError(
                f"agent {agent!r} already has {len(active)} active keys ({ids}); at most "
                f"{MAX_ACTIVE_KEYS_PER_AGENT} are allowed for rotation. Revoke the old one first: "
                f"`orfeas keys revoke <key id>`"
            )
        key_id = f"ak_{self._env}_{secrets.token_hex(10)}"
        secret = Secret(secrets.token_bytes(SECRET_BYTES))
        expires_at = None if expires_in is None else now + expires_in
        await conn.execute(
            insert(AgentKeyRow).values(
                key_id=key_id,
                agent=agent,
                secret_sealed=seal(self._master_key, secret, context=key_id.encode("ascii")),
                scopes=scopes,
                cidrs=[str(network) for network in networks],
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
            )
        )
        info = KeyInfo(key_id, agent, tuple(scopes), tuple(networks), now, expires_at, None)
        return KeyMaterial(info=info, secret=secret)

    async def _agent_keys(self, conn: AsyncConnection, agent: str) -> list[KeyInfo]:
        query = select(*_PUBLIC_COLUMNS).where(AgentKeyRow.agent == agent).order_by(AgentKeyRow.created_at)
        return [_info(row._mapping) for row in await conn.execute(query)]

    async def list(self, agent: str | None = None) -> list[KeyInfo]:
        """All keys (any status), oldest first; secrets are not read."""
        query = select(*_PUBLIC_COLUMNS).order_by(AgentKeyRow.agent, AgentKeyRow.created_at)
        if agent is not None:
            query = query.where(AgentKeyRow.agent == agent)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_info(row._mapping) for row in rows]

    async def lookup(self, key_id: str) -> KeyLookup:
        """The key's status, with decrypted material when active: one query, or none while an active
        lookup is cached (its expiry is still checked against the clock on every hit)."""
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None:
            looked_up_at, found = cached
            info = found.info
            if now - looked_up_at < self._cache_ttl_s and info is not None and info.status(self._now()) == "active":
                return found
            del self._cache[key_id]
        found = await self._lookup(key_id)
        if found.material is not None and self._cache_ttl_s > 0:
            if len(self._cache) >= _MAX_CACHED_KEYS:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[key_id] = (now, found)
        return found

    def _forget(self, *, key_id: str | None = None, agent: str | None = None) -> None:
        for cached_id, (_, found) in list(self._cache.items()):
            if cached_id == key_id or (found.info is not None and found.info.agent == agent):
                del self._cache[cached_id]

    async def _lookup(self, key_id: str) -> KeyLookup:
        async with self._engine.connect() as conn:
            result = await conn.execute(select(AgentKeyRow.__table__).where(AgentKeyRow.key_id == key_id))
            found = result.one_or_none()
        if found is None:
            return KeyLookup(status="unknown")
        info = _info(found._mapping)
        status = info.status(self._now())
        if status != "active":
            return KeyLookup(status=status, info=info)
        secret = unseal(self._master_key, found.secret_sealed, context=key_id.encode("ascii"))
        return KeyLookup(status="active", material=KeyMaterial(info=info, secret=secret), info=info)

    async def get_active(self, key_id: str) -> KeyMaterial | None:
        return (await self.lookup(key_id)).material

    async def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key now; revoking an already revoked key keeps its first revocation time."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(AgentKeyRow)
                .where(AgentKeyRow.key_id == key_id, AgentKeyRow.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            query = select(*_PUBLIC_COLUMNS).where(AgentKeyRow.key_id == key_id)
            found = (await conn.execute(query)).one_or_none()
        self._forget(key_id=key_id)  # after the commit, so no lookup in between can cache the old state
        if found is None:
            raise KeyStoreError(f"no key {key_id!r}; list keys with `orfeas keys list`")
        return _info(found._mapping)

    async def rotate(
        self,
        agent: str,
        *,
        expires_in: dt.timedelta | None = None,
        old_key_grace: dt.timedelta | None = dt.timedelta(days=7),
    ) -> KeyMaterial:
        """A new key for ``agent`` with the scopes and CIDRs of its newest active key.

        The old key keeps working for ``old_key_grace`` (its expiry is brought forward, never extended)
        so the agent can switch without downtime; None leaves its expiry as it was.
        """
        now = self._now()
        async with self._engine.begin() as conn:
            active = [info for info in await self._agent_keys(conn, agent) if info.status(now) == "active"]
            if not active:
                raise KeyStoreError(
                    f"agent {agent!r} has no active key to rotate; create one with `orfeas keys create --agent {agent}`"
                )
            newest = active[-1]
            created = await self._insert(conn, agent, list(newest.scopes), newest.cidrs, expires_in)
            if old_key_grace is not None:
                for info in active:
                    deadline = now + old_key_grace
                    if info.expires_at is None or info.expires_at > deadline:
                        await conn.execute(
                            update(AgentKeyRow).where(AgentKeyRow.key_id == info.key_id).values(expires_at=deadline)
                        )
        self._forget(agent=agent)  # the old keys' expiry moved forward
        return created
