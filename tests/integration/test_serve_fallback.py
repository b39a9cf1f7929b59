"""A new champion that fails to load is answered by the previous one, over real HTTP: john's v1 serves,
v2 (a LoRA export whose base no replica has: it registers and promotes, and the loader refuses it)
is promoted and every request still gets 200 from v1 with ``x-attune-fallback``; v3 (good) is then
served without the header, and the replica drops v1.

One endpoint replica with 0.25 CPU on the shared 2-CPU test Ray, auth off, HTTP on 127.0.0.1.
"""
from __future__ import annotations

import time

from ray import serve as ray_serve

from serve._app import APP_NAME, DEPLOYMENT
from tests.registry_helpers import sqlite_registry
from tests.serve_helpers import app_spec, constant_export, register, running_app
from tests.waiting import wait_for

REFRESH_S = 0.5
FALLBACK = "x-attune-fallback"
VERSION = "x-attune-model-version"


def _answer(client) -> tuple:
    resp = client.post("/v1/tenants/john/predict", json={"texts": ["gold is up 150%"]})
    body = resp.json()
    label = body["predictions"][0]["label"] if resp.status_code == 200 else body
    return resp.status_code, resp.headers.get(VERSION), body.get("model_version"), label, resp.headers.get(FALLBACK)


def _john_models() -> tuple[list[str], int]:
    """The versions of john the replica holds, and how many models it has loaded so far."""
    stats = ray_serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME).stats.remote().result(timeout_s=30)
    return sorted(key.split(":")[1] for key in stats["models"] if key.startswith("john:")), stats["loads"]["count"]


def test_a_champion_that_fails_to_load_is_answered_by_the_previous_one(ray_session, tiny_base, tmp_path):
    reg = sqlite_registry(tmp_path / "store")
    register(reg, "john", constant_export(tiny_base, tmp_path / "v1", "positive"))
    broken = constant_export(tiny_base, tmp_path / "v2", "negative", method="lora")
    manifest = broken / "attune.json"
    manifest.write_text(manifest.read_text().replace('"base": "', '"base": "/nope/'))
    with running_app(app_spec(reg, tmp_path, refresh_s=REFRESH_S)) as client:
        assert _answer(client) == (200, "1", "1", "positive", None)
        register(reg, "john", broken)
        seen = []

        def falls_back():
            seen.append(_answer(client))
            return seen[-1][4] is not None and len(seen) >= 3 and seen[-1]

        wait_for(falls_back, 15, "v2's failed load to be answered by v1 with x-attune-fallback", interval_s=0.1)
        assert all(answer[:4] == (200, "1", "1", "positive") for answer in seen), seen
        note = seen[-1][4]
        assert note.startswith("champion v2 failed to load (the LoRA base '/nope/") and note.endswith("; served v1")
        refreshed_at = time.monotonic()
        wait_for(lambda: _answer(client)[4] and time.monotonic() - refreshed_at > 4 * REFRESH_S, 10,
                 "champion refreshes while v1 answers")
        assert _john_models() == (["1"], 1)  # the refreshes kept v1 (loaded once), which serves while v2 fails

        register(reg, "john", constant_export(tiny_base, tmp_path / "v3", "negative"))
        after = []
        wait_for(lambda: after.append(_answer(client)) or after[-1][1] == "3", 15, "v3 to be served")
        assert all(answer[0] == 200 for answer in after), after
        assert after[-1] == (200, "3", "3", "negative", None)
        wait_for(lambda: _answer(client)[1] == "3" and _john_models() == (["3"], 2), 10,
                 "the replica to drop v1 at a champion refresh once v3 served")
