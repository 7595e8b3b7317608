"""KeyStore on both backends: create/list/lookup/revoke/rotate, the two-active-keys rule, encryption at rest."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.auth.crypto import MasterKeyError
from serve_app.auth.keys import KeyStore, KeyStoreError
from serve_app.auth.secret import Secret


@pytest.fixture
def store(any_engine: AsyncEngine, master_key: Secret) -> KeyStore:
    return KeyStore(any_engine, master_key, env="test")


async def test_key_store_create_returns_secret_once_and_lookup_decrypts_it(store: KeyStore) -> None:
    created = await store.create("render-bot", scopes=["jobs:write", "jobs:read"], cidrs=["10.0.0.0/8"])
    assert created.info.key_id.startswith("ak_test_") and len(created.info.key_id) == len("ak_test_") + 20
    assert len(created.secret.reveal()) == 32
    assert base64.b64decode(created.secret_b64()) == created.secret.reveal()
    assert created.info.scopes == ("jobs:read", "jobs:write")
    assert created.info.cidrs == (ipaddress.ip_network("10.0.0.0/8"),)
    found = await store.get_active(created.info.key_id)
    assert found is not None
    assert found.secret == created.secret
    assert found.info == created.info


async def test_key_store_list_has_no_secrets(store: KeyStore) -> None:
    first = await store.create("render-bot", scopes=["jobs:read"])
    second = await store.create("mesh-bot")
    listed = await store.list()
    assert [info.key_id for info in listed] == [second.info.key_id, first.info.key_id]  # by agent name
    assert [info.key_id for info in await store.list("render-bot")] == [first.info.key_id]
    assert all(not hasattr(info, "secret") for info in listed)
    assert listed[1].to_json(dt.datetime.now(dt.timezone.utc))["status"] == "active"


async def test_key_store_secret_is_encrypted_at_rest(any_engine: AsyncEngine, store: KeyStore) -> None:
    created = await store.create("render-bot")
    raw = created.secret.reveal()
    async with any_engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM agent_keys"))).all()
    stored = b"".join(value if isinstance(value, bytes) else str(value).encode() for row in rows for value in row)
    for form in (raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        assert form not in stored


async def test_key_store_secret_file_bytes_never_hold_raw_secret(sqlite_url: str, master_key: Secret) -> None:
    from serve_app.db import make_engine
    from serve_app.schema import upgrade_schema

    engine = make_engine(sqlite_url)
    await upgrade_schema(engine)
    created = await KeyStore(engine, master_key).create("render-bot")
    await engine.dispose()  # checkpoint the WAL into the file
    path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    on_disk = b"".join(Path(p).read_bytes() for p in (path, path + "-wal") if os.path.exists(p))
    assert created.info.key_id.encode() in on_disk  # the file is the right one
    assert created.secret.reveal() not in on_disk
    assert created.secret_b64().encode() not in on_disk


async def test_key_store_refuses_other_master_key(any_engine: AsyncEngine, store: KeyStore) -> None:
    created = await store.create("render-bot")
    with pytest.raises(MasterKeyError, match="does not open with this master key"):
        await KeyStore(any_engine, Secret(os.urandom(32))).lookup(created.info.key_id)


async def test_key_store_lookup_tells_unknown_revoked_and_expired_apart(
    any_engine: AsyncEngine, master_key: Secret
) -> None:
    clock_now = [time.time()]
    store = KeyStore(any_engine, master_key, clock=lambda: clock_now[0])
    revoked = await store.create("a")
    expiring = await store.create("b", expires_in=dt.timedelta(days=1))
    await store.revoke(revoked.info.key_id)
    clock_now[0] += 2 * 86400
    assert (await store.lookup("ak_live_missing")).status == "unknown"
    assert (await store.lookup(revoked.info.key_id)).status == "revoked"
    lookup = await store.lookup(expiring.info.key_id)
    assert (lookup.status, lookup.material) == ("expired", None)


async def test_key_store_revoke_keeps_first_revocation_time(store: KeyStore) -> None:
    created = await store.create("render-bot")
    first = await store.revoke(created.info.key_id)
    second = await store.revoke(created.info.key_id)
    assert first.revoked_at is not None and second.revoked_at == first.revoked_at
    assert await store.get_active(created.info.key_id) is None


async def test_key_store_revoke_unknown_key_names_fix(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match=r"no key 'ak_live_nope'; list keys with `orfeas keys list`"):
        await store.revoke("ak_live_nope")


async def test_key_store_allows_at_most_two_active_keys_per_agent(store: KeyStore) -> None:
    first = await store.create("render-bot")
    second = await store.create("render-bot")
    with pytest.raises(KeyStoreError) as caught:
        await store.create("render-bot")
    assert str(caught.value) == (
        f"agent 'render-bot' already has 2 active keys ({first.info.key_id}, {second.info.key_id}); at most 2 are "
        "allowed for rotation. Revoke the old one first: `orfeas keys revoke <key id>`"
    )
    await store.revoke(first.info.key_id)
    third = await store.create("render-bot")
    assert third.info.agent == "render-bot"
    await store.create("other-bot")  # the rule is per agent


async def test_key_store_rotate_inherits_scopes_and_sets_grace_on_old_key(store: KeyStore) -> None:
    old = await store.create("render-bot", scopes=["jobs:read"], cidrs=["192.0.2.0/24"])
    new = await store.rotate("render-bot", old_key_grace=dt.timedelta(days=2))
    assert new.info.key_id != old.info.key_id
    assert new.secret != old.secret
    assert (new.info.scopes, new.info.cidrs) == (old.info.scopes, old.info.cidrs)
    old_info = next(info for info in await store.list("render-bot") if info.key_id == old.info.key_id)
    assert old_info.expires_at is not None
    assert dt.timedelta(days=1.99) < old_info.expires_at - new.info.created_at <= dt.timedelta(days=2)
    assert await store.get_active(old.info.key_id) is not None  # still valid during the grace period
    with pytest.raises(KeyStoreError, match="already has 2 active keys"):
        await store.rotate("render-bot")


async def test_key_store_rotate_without_active_key_names_fix(store: KeyStore) -> None:
    with pytest.raises(
        KeyStoreError, match=r"has no active key to rotate; create one with `orfeas keys create --agent ghost`"
    ):
        await store.rotate("ghost")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agent": "bad name"}, "agent name 'bad name' is not valid"),
        ({"agent": "ok", "scopes": ["jobs write"]}, "scope 'jobs write' is not valid"),
        ({"agent": "ok", "cidrs": ["10.0.0.5/8"]}, r"'10.0.0.5/8' has host bits set; did you mean 10.0.0.0/8\?"),
        ({"agent": "ok", "cidrs": ["ten"]}, "'ten' is not an IPv4 or IPv6 CIDR"),
        ({"agent": "ok", "expires_in": dt.timedelta(0)}, "expiry must be in the future"),
    ],
)
async def test_key_store_create_validates_input(key_store: KeyStore, kwargs: dict[str, object], message: str) -> None:
    options = dict(kwargs)
    agent = options.pop("agent")
    with pytest.raises(KeyStoreError, match=message):
        await key_store.create(agent, **options)  # type: ignore[arg-type]


# -- the lookup cache of the ingress ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_key_store_cache_serves_active_key_without_a_query(any_engine: AsyncEngine, master_key: Secret) -> None:
    clock = Clock()
    cached = KeyStore(any_engine, master_key, clock=clock, cache_ttl_s=5)
    created = await cached.create("render-bot", scopes=["jobs:read"])
    assert (await cached.lookup(created.info.key_id)).material == created
    async with any_engine.begin() as conn:
        await conn.execute(text("DELETE FROM agent_keys"))  # only a cache hit can still find it
    assert (await cached.lookup(created.info.key_id)).material == created
    clock.now += 5
    assert (await cached.lookup(created.info.key_id)).status == "unknown"


async def test_key_store_cache_sees_revocation_by_another_process_within_ttl(
    any_engine: AsyncEngine, master_key: Secret
) -> None:
    clock = Clock()
    ingress = KeyStore(any_engine, master_key, clock=clock, cache_ttl_s=5)
    cli = KeyStore(any_engine, master_key, clock=clock)
    created = await cli.create("render-bot", scopes=["jobs:read"])
    assert (await ingress.lookup(created.info.key_id)).status == "active"
    await cli.revoke(created.info.key_id)
    clock.now += 4.9
    assert (await ingress.lookup(created.info.key_id)).status == "active"  # the stated bound: up to 5 s
    clock.now += 0.1
    assert (await ingress.lookup(created.info.key_id)).status == "revoked"


async def test_key_store_cache_drops_keys_revoked_or_rotated_through_it(
    any_engine: AsyncEngine, master_key: Secret
) -> None:
    clock = Clock()
    store = KeyStore(any_engine, master_key, clock=clock, cache_ttl_s=3600)
    revoked = await store.create("render-bot", scopes=["jobs:read"])
    rotated = await store.create("other-bot", scopes=["jobs:read"])
    for material in (revoked, rotated):
        assert (await store.lookup(material.info.key_id)).status == "active"
    await store.revoke(revoked.info.key_id)
    await store.rotate("other-bot", old_key_grace=dt.timedelta(seconds=10))
    assert (await store.lookup(revoked.info.key_id)).status == "revoked"
    clock.now += 11
    assert (await store.lookup(rotated.info.key_id)).status == "expired"


async def test_key_store_cache_never_outlives_key_expiry(any_engine: AsyncEngine, master_key: Secret) -> None:
    clock = Clock()
    store = KeyStore(any_engine, master_key, clock=clock, cache_ttl_s=3600)
    created = await store.create("render-bot", scopes=["jobs:read"], expires_in=dt.timedelta(seconds=30))
    assert (await store.lookup(created.info.key_id)).status == "active"
    clock.now += 30
    assert (await store.lookup(created.info.key_id)).status == "expired"
