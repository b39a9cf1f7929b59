"""Serving's part of erasing a tenant: its API keys.

Every key of the tenant is deleted from the key store, revoked ones too; a SQLite store is then
vacuumed so the deleted rows leave nothing in the file. A running endpoint stops accepting the
keys within ``ATTUNE_SERVE_KEYS_REFRESH_S`` (its key cache; at most 10 s) and answers 401 for them.

The replicas drop the tenant's models on their own: each refreshes every tenant's champion from
the registry every ``ATTUNE_SERVE_REFRESH_S`` and evicts the models of a tenant that has none (the
registry's eraser deleted the registered model), after which the tenant is a 404.
"""
from __future__ import annotations

from registry import check_tenant_id, erase_rows
from serve._keys import KeyStore, _redact, keys_url


def erase_tenant_keys(tenant: str, settings) -> dict:
    """The ``attune.erasers`` entry for serving (see ``cluster._erasure``)."""
    check_tenant_id(tenant)
    url = keys_url(settings)
    return erase_rows(url, _redact(url),
                      lambda: [f"API key {key_id}" for key_id in KeyStore(url).delete_tenant(tenant)])
