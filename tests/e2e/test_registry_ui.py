"""`attune registry ui` serves the MLflow UI on attune's stores, as a user starts it: the REST API shows
the tenants and their aliases, no store URI is on the command line of any process it starts, and a
real browser (headless Chromium) shows a tenant's champion and a run's reliability diagram.

One UI process serves the module, on a registry of two tenants (john and jane) built with the
registry's API from fake model folders and a real reliability diagram. The browser test drives
Debian's chromium (``/usr/bin/chromium``; ``.ci/run`` installs it) with Playwright for Python, and
skips only when no chromium is found. It never downloads a browser (no ``playwright install``).

The README's screenshot of the models page is made the same way:

    .venv/bin/python -m tests.e2e.test_registry_ui docs/images/registry-models.png
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Optional

import pytest

from tests.registry_helpers import fake_model_dir, record, sqlite_registry
from tests.services.mlflow_server import stop_process_group
from tests.services.s3 import _free_ports
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
HAS_PROC = Path("/proc/self/cmdline").is_file()
CHROMIUM_PATHS = ("/usr/bin/chromium", "chromium", "chromium-browser")
NO_CHROMIUM = ("no chromium found (looked for /usr/bin/chromium, then chromium and chromium-browser on PATH); "
               "install Debian's: apt-get install -y --no-install-recommends chromium (.ci/run does)")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# MLflow's first-visit pop-ups (the registry UI's promotion dialog, the assistant's side panel) cover the page.
QUIET_UI = """for (const [key, value] of Object.entries({
    "_mlflow_model_registry_promo_modal_dismissed_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"})) { localStorage.setItem(key, value); }"""
UNSCROLL = "for (const element of document.querySelectorAll('*')) { element.scrollLeft = 0; }"
RELIABILITY_PNG = "reliability.png"  # train._figures.RELIABILITY_PNG, logged under the run's figures/
UI_TIMEOUT_MS = 60_000


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except OSError:
        return None, b""


def _figures(folder: Path) -> list[Path]:
    """A real reliability diagram and confusion matrix, drawn as a fine-tune draws them (over-confident
    logits, which temperature scaling calibrates)."""
    import numpy as np

    from train._figures import figure_data, render_figures

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=300)
    logits = np.stack([-(2 * y_true - 1), 2 * y_true - 1], axis=1) * 4.0 + rng.normal(0, 5.0, size=(300, 2))
    figures = render_figures(figure_data(logits, y_true, ["negative", "positive"], temperature=2.5), folder)
    assert [p.name for p in figures][0] == RELIABILITY_PNG
    return figures


def _build_registry(home: Path) -> dict:
    """john and jane, two versions each: version 1 champion, version 2 challenger, every run with figures."""
    reg = sqlite_registry(home)
    figures = _figures(home.parent / "figures")
    runs = {}
    for tenant in ("john", "jane"):
        for n in (1, 2):
            run = record(tenant).model_copy(update={"figures": figures})
            info = reg.register_candidate(tenant, fake_model_dir(home.parent / f"{tenant}-{n}"), run)
            runs[(tenant, info.version)] = info.run_id
        reg.promote(tenant, "1", reason="first")
    return {"reg": reg, "runs": runs}


@contextlib.contextmanager
def _running_ui(root: Path) -> Iterator[SimpleNamespace]:
    """`attune registry ui` on a fresh registry under ``root``, started as a user starts it (ATTUNE_HOME set,
    no tracking URI); yields its URL, process and registry once /health answers."""
    home = (root / "home").resolve()
    built = _build_registry(home)
    [port] = _free_ports(1)
    env = dict(os.environ, ATTUNE_HOME=str(home))
    env.pop("ATTUNE_MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "registry", "ui", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and _get(f"{base}/health")[0] == 200, 120,
                 "the MLflow UI to answer /health")
        yield SimpleNamespace(base=base, proc=proc, home=home, **built)
    finally:
        stop_process_group(proc, grace_s=15)


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[SimpleNamespace]:
    with _running_ui(tmp_path_factory.mktemp("registry-ui")) as running:
        yield running


def test_ui_serves_the_registry_with_aliases(ui):
    status, page = _get(f"{ui.base}/")
    assert status == 200 and b"<html" in page.lower()
    _, body = _get(f"{ui.base}/api/2.0/mlflow/registered-models/search?max_results=100")
    models = {m["name"]: m for m in json.loads(body)["registered_models"]}
    assert set(models) == {"tenant.john", "tenant.jane"}
    for model in models.values():
        assert {(a["alias"], a["version"]) for a in model["aliases"]} == {("champion", "1"), ("challenger", "2")}
    _, body = _get(f"{ui.base}/api/2.0/mlflow/model-versions/get?name=tenant.john&version=1")
    tags = {t["key"]: t["value"] for t in json.loads(body)["model_version"]["tags"]}
    assert tags["attune.promotion.reason"] == "first" and tags["attune.base"] == "minilm"
    assert float(tags["attune.metric.test_macro_f1"]) == pytest.approx(0.9)


# -- no store URI on a command line (folded in from tests/unit/test_secrets.py) -----------------------

def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ").strip()
    except FileNotFoundError:
        return ""


def _tree_cmdlines(pid: int) -> list[str]:
    """Command lines of ``pid`` and all its descendants (``mlflow server`` starts uvicorn)."""
    lines, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            lines.append(_cmdline(current))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return lines


@pytest.mark.skipif(not HAS_PROC, reason="reads /proc/<pid>/cmdline")
def test_real_registry_ui_serves_the_store_with_no_store_uri_on_any_command_line(ui):
    _, body = _get(f"{ui.base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tenant.jane")
    assert json.loads(body)["experiment"]["name"] == "tenant.jane"  # it reads the store named in its environment
    lines = _tree_cmdlines(ui.proc.pid)
    db_path = ui.reg.tracking_uri.removeprefix("sqlite:///")
    assert any(" mlflow server " in f" {line} " for line in lines), lines
    assert len(lines) >= 2 and not [line for line in lines if db_path in line or "sqlite:" in line], lines


# -- in a browser ----------------------------------------------------------------------------------

def _chromium() -> Optional[str]:
    for name in CHROMIUM_PATHS:
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def _browser_page(chromium: str, profile: Path, width: int = 1280, height: int = 720):
    """A page of headless ``chromium`` with a fresh profile, driven by Playwright (never its own browsers)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, args=BROWSER_ARGS, headless=True,
            viewport={"width": width, "height": height})
        try:
            context.add_init_script(QUIET_UI)
            yield context.new_page()
        finally:
            context.close()


def _version_row(page, alias: str):
    row = page.get_by_role("row").filter(has_text=f"@ {alias}")
    row.first.wait_for(timeout=UI_TIMEOUT_MS)
    assert row.count() == 1, f"{row.count()} versions show @ {alias}"
    return row.inner_text().split()[:2]  # ["Version", "<n>"]


def test_browser_shows_the_champion_and_the_reliability_diagram(ui, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip(NO_CHROMIUM)
    with _browser_page(chromium, tmp_path / "profile") as page:
        page.goto(f"{ui.base}/#/models/tenant.john")
        assert _version_row(page, "champion") == ["Version", "1"]
        assert _version_row(page, "challenger") == ["Version", "2"]
        page.screenshot(path=str(tmp_path / "tenant-john.png"))

        run_id = ui.runs[("john", "1")]
        experiment_id = ui.reg.client.get_run(run_id).info.experiment_id
        page.goto(f"{ui.base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts")
        page.get_by_text("figures", exact=True).click(timeout=UI_TIMEOUT_MS)
        listed = page.get_by_text(RELIABILITY_PNG, exact=True)
        listed.click(timeout=UI_TIMEOUT_MS)  # listed under figures/, and opens in the preview
        page.get_by_text(f"figures/{RELIABILITY_PNG}", exact=True).wait_for(timeout=UI_TIMEOUT_MS)
        drawn = page.wait_for_function(
            "() => [...document.images].some(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 300)",
            timeout=UI_TIMEOUT_MS)
        assert drawn.json_value() is True  # the PNG's bytes came back from the artifact store and decoded
        page.screenshot(path=str(tmp_path / "run-reliability.png"))
    assert (tmp_path / "tenant-john.png").stat().st_size > 10_000
    assert (tmp_path / "run-reliability.png").stat().st_size > 10_000


def screenshot_models_page(out: Path) -> Path:
    """The models page of a fresh two-tenant registry, john's aliases opened (champion and challenger), as PNG."""
    chromium = _chromium()
    if chromium is None:
        raise SystemExit(NO_CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="attune-ui-shot-") as tmp:
        with _running_ui(Path(tmp)) as running, _browser_page(chromium, Path(tmp) / "profile", 1600, 330) as page:
            page.goto(f"{running.base}/#/models")
            john = page.get_by_role("row").filter(has_text="tenant.john")
            john.get_by_text("+1", exact=True).click(timeout=UI_TIMEOUT_MS)  # the second alias: champion
            page.get_by_text("@ champion").first.wait_for(timeout=UI_TIMEOUT_MS)
            page.evaluate(UNSCROLL)  # the click scrolled the alias cell sideways to reach the button
            page.screenshot(path=str(out))
    return out


if __name__ == "__main__":
    print(screenshot_models_page(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/registry-models.png")))
