"""A new champion that fails to load is answered by the previous one, over real HTTP: fiona's v1 serves,
v2 (a LoRA export whose base no replica has: it registers and promotes, and the loader refuses it)
is promoted and every request still gets 200 from v1 with ``x-attune-fallback``; v3 (good) is then
served without the header, and the replica drops v1.

Runs on the Serve app that tests/integration/test_serve_app.py uses (the ``served`` fixture of
tests/integration/conftest.py: one endpoint replica with 0.25 CPU on the shared 2-CPU test Ray, HTTP
on 127.0.0.1), with a tenant no other test uses, so it pays for no Serve start of its own.
"""
from __future__ import annotations

import time

from ray import serve as ray_serve

from serve._app import APP_NAME, DEPLOYMENT
from tests.serve_helpers import constant_export, register
from tests.waiting import wait_for

TENANT = "fiona"
FALLBACK = "x-attune-fallback"
VERSION = "x-attune-model-version"


def _answer(served) -> tuple:
    resp = served["client"].post(f"/v1/tenants/{TENANT}/predict", json={"texts": ["gold is up 150%"]},
                                 headers={"Authorization": f"Bearer {served['keys']['admin']}"})
    body = resp.json()
    label = body["predictions"][0]["label"] if resp.status_code == 200 else body
    return resp.status_code, resp.headers.get(VERSION), body.get("model_version"), label, resp.headers.get(FALLBACK)


def _tenant_models() -> tuple[list[str], int]:
    """The versions of the tenant the replica holds, and how many models it has loaded so far (all tenants)."""
    stats = ray_serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME).stats.remote().result(timeout_s=30)
    return sorted(key.split(":")[1] for key in stats["models"] if key.startswith(f"{TENANT}:")), stats["loads"]["count"]


def test_a_champion_that_fails_to_load_is_answered_by_the_previous_one(served, tiny_base, tmp_path):
    reg, refresh_s = served["reg"], served["spec"].refresh_s
    register(reg, TENANT, constant_export(tiny_base, tmp_path / "v1", "positive"))
    broken = constant_export(tiny_base, tmp_path / "v2", "negative", method="lora")
    manifest = broken / "attune.json"
    manifest.write_text(manifest.read_text().replace('"base": "', '"base": "/nope/'))
    wait_for(lambda: _answer(served) == (200, "1", "1", "positive", None), 10 + 2 * refresh_s,
             "v1 of a tenant new to the running app to be served")
    loads = _tenant_models()[1]  # v1's load included
    register(reg, TENANT, broken)
    seen = []

    def falls_back():
        seen.append(_answer(served))
        return seen[-1][4] is not None and len(seen) >= 3 and seen[-1]

    wait_for(falls_back, 15, "v2's failed load to be answered by v1 with x-attune-fallback", interval_s=0.1)
    assert all(answer[:4] == (200, "1", "1", "positive") for answer in seen), seen
    note = seen[-1][4]
    assert note.startswith("champion v2 failed to load (the LoRA base '/nope/") and note.endswith("; served v1")
    refreshed_at = time.monotonic()
    wait_for(lambda: _answer(served)[4] and time.monotonic() - refreshed_at > 4 * refresh_s, 10,
             "champion refreshes while v1 answers")
    assert _tenant_models() == (["1"], loads)  # the refreshes kept v1 (loaded once), which serves while v2 fails

    register(reg, TENANT, constant_export(tiny_base, tmp_path / "v3", "negative"))
    after = []
    wait_for(lambda: after.append(_answer(served)) or after[-1][1] == "3", 15, "v3 to be served")
    assert all(answer[0] == 200 for answer in after), after
    assert after[-1] == (200, "3", "3", "negative", None)
    wait_for(lambda: _answer(served)[1] == "3" and _tenant_models() == (["3"], loads + 1), 10,
             "the replica to drop v1 at a champion refresh once v3 served")
