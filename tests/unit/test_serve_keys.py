"""API keys: salted hashes only, verification, revocation through the TTL cache, tenant scoping (no Ray)."""
from __future__ import annotations

import hashlib

import pytest

from cluster import get_settings
from serve._auth import Authenticator, authorize
from serve._errors import ForbiddenError, UnauthorizedError
from serve._keys import KeyStore, KeyStoreError, hash_secret, is_legacy_hash, keys_url, split_key, verify_secret


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(f"sqlite:///{tmp_path / 'keys.db'}")


def test_only_a_salted_hash_is_stored(store, tmp_path):
    created = store.create("john")
    key_id, secret = split_key(created["key"])
    assert created["key_id"] == key_id and created["tenant"] == "john" and not created["admin"]
    raw = (tmp_path / "keys.db").read_bytes()
    assert secret.encode() not in raw and created["key"].encode() not in raw
    assert hash_secret(secret) != hash_secret(secret)  # a fresh salt every time
    assert "secret_hash" not in store.list()[0]


def _legacy_hash(secret: str, iterations: int = 1000) -> str:
    """A key as earlier versions stored it: PBKDF2-SHA256."""
    salt = bytes(range(16))
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def test_hash_round_trip():
    stored = hash_secret("s3cret")
    assert stored.startswith("sha256$") and not is_legacy_hash(stored)
    assert verify_secret("s3cret", stored) and not verify_secret("s3cret!", stored)
    assert not verify_secret("s3cret", "md5$1$00$00") and not verify_secret("x", "garbage")
    assert not verify_secret("x", "sha256$zz$00") and not verify_secret("x", "pbkdf2_sha256$x$00$00")
    legacy = _legacy_hash("s3cret")
    assert is_legacy_hash(legacy) and verify_secret("s3cret", legacy) and not verify_secret("s3cret!", legacy)


def test_a_legacy_key_still_works_and_is_rehashed_at_its_first_use(store):
    import sqlalchemy as sa

    for verify in (store.verify, lambda key: Authenticator(store, ttl_s=5.0).authenticate(f"Bearer {key}")):
        created = store.create("john")
        key_id, secret = split_key(created["key"])
        with store.engine.begin() as conn:
            conn.execute(sa.update(store.table).where(store.table.c.key_id == key_id)
                         .values(secret_hash=_legacy_hash(secret)))
        assert verify(created["key"]).tenant == "john"
        stored = store.row(key_id).secret_hash
        assert stored.startswith("sha256$") and verify_secret(secret, stored)
        assert verify(created["key"]).tenant == "john"


class CountingStore:
    """A real key store that counts its row queries."""

    def __init__(self, store: KeyStore):
        self.store, self.queries = store, 0

    def row(self, key_id):
        self.queries += 1
        return self.store.row(key_id)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_flood_of_wrong_secrets_costs_a_hash_each_and_evicts_no_valid_key(store, monkeypatch):
    monkeypatch.setattr("serve._auth.MAX_CACHED", 100)
    counting = CountingStore(store)
    auth = Authenticator(counting, ttl_s=60.0, clock=Clock())
    john = store.create("john")
    key_id, _ = split_key(john["key"])
    assert auth.authenticate(f"Bearer {john['key']}").tenant == "john" and counting.queries == 1
    hashes = []
    monkeypatch.setattr("serve._keys.hmac.new", _counting(hashes, __import__("hmac").new))
    monkeypatch.setattr("serve._keys.hashlib.pbkdf2_hmac", _refuse)
    for i in range(500):  # wrong secrets for john's key id: no store query, one HMAC each
        with pytest.raises(UnauthorizedError):
            auth.authenticate(f"Bearer atn_{key_id}_wrong{i}")
    assert counting.queries == 1 and len(hashes) == 500
    for i in range(300):  # made-up key ids, three times the cache: one query per id, john's row stays
        with pytest.raises(UnauthorizedError):
            auth.authenticate(f"Bearer atn_{i:012x}_x")
    assert counting.queries == 301
    assert not auth.needs_store(f"Bearer {john['key']}")
    assert auth.authenticate(f"Bearer {john['key']}").tenant == "john" and counting.queries == 301


def _counting(calls: list, fn):
    def wrapped(*args, **kwargs):
        calls.append(args)
        return fn(*args, **kwargs)
    return wrapped


def _refuse(*_args, **_kwargs):
    raise AssertionError("a wrong secret for a current key must not cost a stretched hash")


def test_verify_revoke_and_admin(store):
    john, admin = store.create("john"), store.create(None, admin=True)
    assert store.verify(john["key"]).tenant == "john"
    assert store.verify(admin["key"]).admin
    assert store.verify(john["key"][:-1] + ("A" if john["key"][-1] != "A" else "B")) is None
    assert store.verify("not-a-key") is None and store.verify(f"atn_{'0' * 12}_x") is None
    assert store.revoke(john["key_id"])["revoked_at"]
    assert store.verify(john["key"]) is None and store.count_active() == 1
    with pytest.raises(KeyStoreError, match="no key with id"):
        store.revoke("nope")
    with pytest.raises(KeyStoreError, match="either for one tenant"):
        store.create("john", admin=True)


def test_revocation_is_seen_within_the_ttl(store):
    clock = Clock()
    auth = Authenticator(store, ttl_s=5.0, clock=clock)
    created = store.create("john")
    header = f"Bearer {created['key']}"
    assert auth.authenticate(header).tenant == "john"
    store.revoke(created["key_id"])
    clock.now += 4.9
    assert auth.authenticate(header).tenant == "john"  # still cached
    assert not auth.needs_store(header)
    clock.now += 0.2
    assert auth.needs_store(header)
    with pytest.raises(UnauthorizedError, match="invalid or revoked"):
        auth.authenticate(header)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer atn_nothing"])
def test_missing_or_malformed_keys_are_401(store, header):
    with pytest.raises(UnauthorizedError) as err:
        Authenticator(store, ttl_s=1.0).authenticate(header)
    assert err.value.http_status == 401


def test_cross_tenant_is_403_and_admin_may_call_anyone(store):
    auth = Authenticator(store, ttl_s=1.0)
    john = auth.authenticate(f"Bearer {store.create('john')['key']}")
    admin = auth.authenticate(f"Bearer {store.create(None, admin=True)['key']}")
    authorize(john, "john")
    authorize(admin, "jane")
    with pytest.raises(ForbiddenError) as err:
        authorize(john, "jane")
    assert err.value.http_status == 403 and "another tenant" in err.value.message


def test_insecure_mode_needs_no_key():
    principal = Authenticator(None, ttl_s=1.0, insecure_no_auth=True).authenticate(None)
    assert principal.admin and principal.may_call("anyone")


def test_keys_live_with_a_postgres_registry_else_in_attune_home(tmp_path):
    pg = "postgresql+psycopg2://u:p@db/attune"
    assert keys_url(get_settings({"ATTUNE_HOME": str(tmp_path), "ATTUNE_MLFLOW_TRACKING_URI": pg})) == pg
    assert keys_url(get_settings({"ATTUNE_MLFLOW_TRACKING_URI": "http://mlflow:5000",
                                  "ATTUNE_MLFLOW_BACKEND_STORE_URI": pg})) == pg
    assert keys_url(get_settings({"ATTUNE_KEYS_DB_URL": "sqlite:////x/k.db",
                                  "ATTUNE_MLFLOW_TRACKING_URI": pg})) == "sqlite:////x/k.db"
    assert keys_url(get_settings({"ATTUNE_HOME": str(tmp_path)})) == f"sqlite:///{tmp_path.resolve()}/keys.db"


def test_cli_create_prints_the_key_once_and_revoke(tmp_path, monkeypatch, capsys):
    import json

    from cluster.cli import main

    monkeypatch.setenv("ATTUNE_HOME", str(tmp_path))
    assert main(["keys", "create", "--tenant", "john", "--json"]) == 0
    created = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(created) == {"tenant", "key_id", "key", "admin"} and created["tenant"] == "john"
    assert main(["keys", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["keys"]
    assert [k["key_id"] for k in listed] == [created["key_id"]] and created["key"] not in json.dumps(listed)
    assert main(["keys", "revoke", created["key_id"]]) == 0
    assert "revoked key" in capsys.readouterr().out
    assert KeyStore(keys_url(get_settings())).verify(created["key"]) is None
    assert main(["keys", "create", "--admin", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["admin"] is True
    assert main(["keys", "create", "--tenant", "Bad Name!"]) == 2


def test_an_unreadable_key_store_answers_503_and_keeps_its_error_in_the_log(store, caplog):
    import logging

    from serve._keys import TABLE, KeyStoreUnavailableError

    created = store.create("john")
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {TABLE}")  # the store is there but cannot be read
    with caplog.at_level(logging.ERROR, logger="attune.serve"), pytest.raises(KeyStoreUnavailableError) as err:
        Authenticator(store, ttl_s=5.0).authenticate(f"Bearer {created['key']}")
    assert (err.value.http_status, err.value.code, err.value.headers()["retry-after"]) == (
        503, "key_store_unavailable", "5")
    assert TABLE not in str(err.value.body())
    assert any("no such table" in record.getMessage() for record in caplog.records)
