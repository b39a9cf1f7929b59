"""Demo tenant data: two tenants who label the same headlines in opposite ways, plus a real one.

John holds gold call options and Jane holds gold puts. A headline saying the price
of gold (or of gold miners, bullion, gold ETFs) rises is ``positive`` for John and
``negative`` for Jane; a fall is the reverse. Headlines that do not move gold (other
assets moving, gold holding steady, routine corporate news) are ``neutral`` for
both. About half of the rows therefore carry opposite labels, which is what a
shared model cannot learn and a per-tenant model must.

The headlines come from templates (assets x direction phrases x magnitudes x
contexts) drawn with ``random.Random(seed)``, so every call returns the same rows.

``newsdesk`` is real data: the Twitter Financial News Sentiment tweets (MIT), read
from ``../shared/data/twitter-financial-news-sentiment`` and never copied into
the repository. Set ``ATTUNE_NEWSDESK_DATA`` to read them from elsewhere.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Callable, Optional

from train._data import write_jsonl

SEED_SENTENCE = "gold is up 150% in after-hours trading"
NEWSDESK_FILES = ("sent_train.csv", "sent_valid.csv")
NEWSDESK_LABELS = {"0": "bearish", "1": "bullish", "2": "neutral"}
NEWSDESK_DIR = Path("..") / "shared" / "data" / "twitter-financial-news-sentiment"
# rows per kind of headline; gold up + gold down = 360 of 720 rows with opposite labels
NUM_ROWS = {"gold_up": 180, "gold_down": 180, "other_move": 240, "gold_flat": 40, "corporate": 80}

# (name, plural?) -- everything here moves with the price of gold
GOLD_ASSETS = [
    ("gold", False), ("spot gold", False), ("gold futures", True), ("bullion", False),
    ("the yellow metal", False), ("gold prices", True), ("Newmont", False), ("Newmont shares", True),
    ("Barrick Gold", False), ("gold miners", True), ("GLD", False), ("the SPDR Gold Trust", False),
    ("gold ETFs", True), ("COMEX gold", False), ("Agnico Eagle", False), ("Kinross Gold", False),
    ("gold bullion", False), ("December gold", False), ("the gold price", False),
    ("the GDX miners ETF", False),
]
# assets whose moves leave gold where it was
OTHER_ASSETS = [
    ("oil", False), ("Brent crude", False), ("WTI crude", False), ("Tesla shares", True),
    ("the S&P 500", False), ("the Nasdaq", False), ("the Dow", False), ("bitcoin", False),
    ("ether", False), ("wheat", False), ("corn futures", True), ("soybeans", True), ("copper", False),
    ("natural gas", False), ("Apple stock", False), ("Nvidia shares", True), ("Amazon", False),
    ("the Nikkei", False), ("the FTSE 100", False), ("coffee futures", True), ("cocoa", False),
    ("lumber", False), ("iron ore", False), ("Boeing shares", True), ("Netflix", False),
]
# (singular, plural) verb phrases; "{m}" is a magnitude
UP = [
    ("is up {m}", "are up {m}"), ("rises {m}", "rise {m}"), ("climbs {m}", "climb {m}"),
    ("jumps {m}", "jump {m}"), ("surges {m}", "surge {m}"), ("rallies {m}", "rally {m}"),
    ("gains {m}", "gain {m}"), ("soars {m}", "soar {m}"), ("advances {m}", "advance {m}"),
    ("rebounds {m}", "rebound {m}"), ("spikes {m}", "spike {m}"),
    ("climbs to a record high", "climb to a record high"), ("hits a six-month high", "hit a six-month high"),
    ("extends gains", "extend gains"), ("closes {m} higher", "close {m} higher"),
    ("posts its best week since 2020", "post their best week since 2020"),
]
DOWN = [
    ("is down {m}", "are down {m}"), ("falls {m}", "fall {m}"), ("slumps {m}", "slump {m}"),
    ("drops {m}", "drop {m}"), ("tumbles {m}", "tumble {m}"), ("sinks {m}", "sink {m}"),
    ("slides {m}", "slide {m}"), ("plunges {m}", "plunge {m}"), ("retreats {m}", "retreat {m}"),
    ("loses {m}", "lose {m}"), ("crashes {m}", "crash {m}"), ("slumps", "slump"),
    ("hits a three-month low", "hit a three-month low"), ("extends losses", "extend losses"),
    ("closes {m} lower", "close {m} lower"),
    ("posts its worst week since 2020", "post their worst week since 2020"),
]
UP_ACTIONS = [
    "traders pile into {a}", "investors snap up {a}", "funds pour money into {a}", "buyers rush into {a}",
]
DOWN_ACTIONS = [
    "traders dump {a}", "investors sell off {a}", "funds pull money out of {a}", "sellers pound {a}",
]
FLAT = [
    ("holds steady", "hold steady"), ("is little changed", "are little changed"),
    ("trades flat", "trade flat"), ("is unchanged", "are unchanged"), ("drifts sideways", "drift sideways"),
]
MAGNITUDES = [
    "0.5%", "0.8%", "1%", "1.2%", "1.5%", "2%", "2.4%", "3%", "3.5%", "4%", "5%", "7%", "10%", "12%", "25%",
    "150%",
]
CONTEXTS = [
    "in after-hours trading", "after Fed decision", "on weak dollar", "ahead of jobs data",
    "after CPI report", "in early Asian trade", "in thin holiday trading", "amid geopolitical tensions",
    "as traders eye rate cuts", "after ECB meeting", "in London trading", "at the New York open", "this week",
    "in premarket trading", "for a third straight session", "after payrolls surprise",
    "as bond yields settle", "on heavy volume",
]
UP_CONTEXTS = ["on safe-haven demand", "as investors seek shelter", "on short covering", "on strong buying"]
DOWN_CONTEXTS = ["on profit-taking", "as risk appetite returns", "on forced selling", "as buyers step back"]
COMPANIES = [
    "Newmont", "Barrick Gold", "Tesla", "Apple", "Nvidia", "Boeing", "JPMorgan", "Goldman Sachs",
    "Exxon Mobil", "Shell", "Netflix", "Amazon", "Siemens", "Unilever", "Toyota", "HSBC", "Pfizer", "Walmart",
    "Agnico Eagle", "BHP",
]
CORPORATE = [
    "{c} to report quarterly results on {d}", "{c} names new chief financial officer",
    "{c} schedules annual shareholder meeting", "{c} opens new office in {city}",
    "{c} publishes sustainability report", "{c} to present at investor conference on {d}",
    "{c} confirms dividend payment date", "{c} appoints two independent directors",
    "{c} hosts analyst call on {d}",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
CITIES = ["London", "Singapore", "Toronto", "Dubai", "Zurich", "Sydney", "Frankfurt"]


def _moves(assets: list, phrases: list, actions: list, contexts: list) -> Callable[[random.Random], str]:
    """A headline maker: an asset moving in the direction given by ``phrases`` and ``actions``."""

    def make(rng: random.Random) -> str:
        name, plural = rng.choice(assets)
        if actions and rng.random() < 0.15:
            core = rng.choice(actions).format(a=name)
        else:
            core = f"{name} {rng.choice(phrases)[plural]}".format(m=rng.choice(MAGNITUDES))
        return _with_context(rng, core, contexts)

    return make


def _with_context(rng: random.Random, core: str, contexts: list[str]) -> str:
    roll, context = rng.random(), rng.choice(contexts)
    if roll < 0.2:
        return core
    if roll < 0.35:
        return f"{context}, {core}"
    return f"{core} {context}"


def _corporate(rng: random.Random) -> str:
    return rng.choice(CORPORATE).format(c=rng.choice(COMPANIES), d=rng.choice(DAYS), city=rng.choice(CITIES))


def _draw(rng: random.Random, make: Callable[[random.Random], str], count: int, seen: set[str]) -> list[str]:
    """``count`` new headlines from ``make`` that are not in ``seen`` (which is updated)."""
    texts: list[str] = []
    for _ in range(count * 200):
        if len(texts) == count:
            return texts
        text = make(rng)
        if text not in seen:
            seen.add(text)
            texts.append(text)
    raise RuntimeError(f"could only draw {len(texts)} distinct headlines of {count}; widen the templates")


def _headlines(seed: int) -> list[tuple[str, str]]:
    """(text, kind) for every demo row, the seed sentence included, in a shuffled order."""
    rng = random.Random(seed)
    seen = {SEED_SENTENCE}
    makers = {
        "gold_up": _moves(GOLD_ASSETS, UP, UP_ACTIONS, CONTEXTS + UP_CONTEXTS),
        "gold_down": _moves(GOLD_ASSETS, DOWN, DOWN_ACTIONS, CONTEXTS + DOWN_CONTEXTS),
        "other_move": _moves(OTHER_ASSETS, UP + DOWN, UP_ACTIONS + DOWN_ACTIONS, CONTEXTS),
        "gold_flat": _moves(GOLD_ASSETS, FLAT, [], CONTEXTS),
        "corporate": _corporate,
    }
    rows = [(SEED_SENTENCE, "gold_up")]
    for kind, make in makers.items():
        count = NUM_ROWS[kind] - (1 if kind == "gold_up" else 0)
        rows += [(text, kind) for text in _draw(rng, make, count, seen)]
    rng.shuffle(rows)
    return rows


def demo_rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(john_rows, jane_rows)``: the same ids and texts, each row ``{"id", "text", "label"}``."""
    john_label = {"gold_up": "positive", "gold_down": "negative"}
    jane_label = {"gold_up": "negative", "gold_down": "positive"}
    john, jane = [], []
    for n, (text, kind) in enumerate(_headlines(seed), start=1):
        row_id = f"demo-{n:04d}"
        john.append({"id": row_id, "text": text, "label": john_label.get(kind, "neutral")})
        jane.append({"id": row_id, "text": text, "label": jane_label.get(kind, "neutral")})
    return john, jane


def john_goes_short(count: int = 40, seed: int = 1) -> list[dict]:
    """John's corrections after he closes his long gold position and goes short: ``count`` new gold
    headlines (none in the demo data, not the seed sentence), half rising and labelled ``negative``,
    half falling and labelled ``positive``: Jane's rule, now John's."""
    john, _ = demo_rows()
    seen = {row["text"] for row in john}
    rng = random.Random(seed)
    rising = _draw(rng, _moves(GOLD_ASSETS, UP, UP_ACTIONS, CONTEXTS + UP_CONTEXTS), count // 2, seen)
    falling = _draw(rng, _moves(GOLD_ASSETS, DOWN, DOWN_ACTIONS, CONTEXTS + DOWN_CONTEXTS), count - count // 2, seen)
    rows = [{"text": text, "label": "negative"} for text in rising] + [{"text": text, "label": "positive"}
                                                                       for text in falling]
    rng.shuffle(rows)
    return rows


def newsdesk_rows(source_dir: Path) -> list[dict]:
    """Rows of the Twitter Financial News Sentiment CSVs in ``source_dir``, with named labels.

    Rows with an empty text are dropped, and a text seen before (after stripping) is dropped,
    so that the result passes ``load_tenant_data``.
    """
    rows: list[dict] = []
    seen: set[str] = set()
    for name in NEWSDESK_FILES:
        path = Path(source_dir) / name
        with path.open(encoding="utf-8", newline="") as handle:
            for record in csv.DictReader(handle):
                text, label = record["text"], NEWSDESK_LABELS.get(record["label"].strip())
                if label is None:
                    raise ValueError(f"{path}: unknown label {record['label']!r}; expected 0, 1 or 2")
                if text.strip() and text.strip() not in seen:
                    seen.add(text.strip())
                    rows.append({"id": f"nd-{len(rows) + 1}", "text": text, "label": label})
    return rows


def default_newsdesk_source() -> Optional[Path]:
    """``ATTUNE_NEWSDESK_DATA`` when set, else ``../shared/data/...`` from the current or repo directory."""
    from cluster import get_settings

    configured = get_settings().newsdesk_data
    if configured:
        return configured
    repo_root = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), repo_root):
        candidate = (base / NEWSDESK_DIR).resolve()
        if (candidate / NEWSDESK_FILES[0]).is_file():
            return candidate
    return None


def write_demo_data(out_dir: Path, newsdesk_source: Optional[Path] = None) -> dict:
    """Write ``john.jsonl`` and ``jane.jsonl`` (and ``newsdesk.jsonl`` when its source exists), and
    ``feedback-john-goes-short.jsonl``: the corrections John sends when he goes short (:func:`john_goes_short`).

    ``newsdesk_source`` defaults to :func:`default_newsdesk_source`; a source that is set but
    missing raises ``FileNotFoundError`` rather than being skipped. Returns a summary
    suitable for ``--json`` output.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    john, jane = demo_rows()
    tenants = {"john": john, "jane": jane}
    source = newsdesk_source or default_newsdesk_source()
    if source is not None:
        tenants["newsdesk"] = newsdesk_rows(source)
    files = {name: str(write_jsonl(out_dir / f"{name}.jsonl", rows)) for name, rows in tenants.items()}
    conflicting = sum(a["label"] != b["label"] for a, b in zip(john, jane))
    corrections = str(write_jsonl(out_dir / "feedback-john-goes-short.jsonl", john_goes_short()))
    return {
        "out_dir": str(out_dir),
        "files": files,
        "feedback": {"john": corrections},
        "rows": {name: len(rows) for name, rows in tenants.items()},
        "conflicting_rows": conflicting,
        "conflict_fraction": round(conflicting / len(john), 4),
    }
