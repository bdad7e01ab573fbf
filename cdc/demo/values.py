"""Value makers shared by the generator and the bots.

The point of the demo is to make a replicator prove it copies values exactly, so the values
are chosen to be the ones that break naive copies: REAL edge cases (-0.0, the smallest normal
and subnormal doubles, 0.1 + 0.2), 64-bit integer extremes, unicode that is not just ASCII
(emoji with ZWJ sequences, right-to-left scripts, combining marks), BLOBs full of NUL bytes,
and NULLs. Everything is drawn from a caller's `random.Random` so a seed reproduces it.
"""

from __future__ import annotations

import json
import random
import struct
from datetime import UTC, datetime, timedelta

EDGE_REALS: tuple[float, ...] = (
    -0.0,
    0.0,
    1e-300,
    5e-324,
    0.1 + 0.2,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    2.0**53 + 1,
    -123.456,
)
"""REALs a lossy copy gets wrong. Note: a REAL-affinity column stores -0.0 as 0.0 (SQLite
normalises integral reals), an untyped column keeps the sign; both cases occur in the demo."""

EDGE_INTS: tuple[int, ...] = (0, -1, 2**63 - 1, -(2**63), 2**31, 2**53 + 1)

UNICODE_SNIPPETS: tuple[str, ...] = (
    "gm 🚀🌕",
    "👨‍👩‍👧‍👦 family",
    "مرحبا بالعالم",
    "שלום עולם",
    "cafe\u0301 (combining)",
    "日本語のテキスト",
    "Ελληνικά",
    "🏳️‍🌈 flags 🇺🇸",
    "mixed عربي and English",
    "tab\tand newline\n",
    "quote ' and \" and \\ backslash",
    "",
)

SYMBOLS: tuple[str, ...] = ("SOL", "BONK", "WIF", "JUP", "PYTH", "RAY", "ORCA", "$MOON🚀")
PROVIDERS: tuple[tuple[str, str], ...] = (
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-haiku"),
    ("xai", "grok-2"),
    ("groq", "llama-3.1-70b"),
)
COMPONENTS: tuple[str, ...] = ("telegram", "x_bot", "trader", "treasury", "jupiter", "helius")

BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
"""Generated rows carry explicit timestamps from here on, so a seed reproduces every value."""

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58(rng: random.Random, n: int = 44) -> str:
    """A Solana-looking address or signature (base58 alphabet)."""
    return "".join(rng.choice(B58) for _ in range(n))


def ts(offset_seconds: float) -> str:
    """A legacy-style ISO timestamp, BASE_TIME + offset."""
    return (BASE_TIME + timedelta(seconds=offset_seconds)).isoformat()


def now_iso() -> str:
    """The bots stamp rows with wall-clock time, like the real writers."""
    return datetime.now(UTC).isoformat()


def minute_iso(epoch_minute: int) -> str:
    """A metrics bucket label: the UTC minute as ISO text."""
    return datetime.fromtimestamp(epoch_minute * 60, UTC).isoformat(timespec="minutes")


def real(rng: random.Random, lo: float = 0.0, hi: float = 100.0, edge: float = 0.08) -> float:
    """A REAL that is an edge value with probability `edge`."""
    if rng.random() < edge:
        return rng.choice(EDGE_REALS)
    return rng.uniform(lo, hi)


def money(rng: random.Random, hi: float = 50.0) -> float:
    """REAL money the way the bots computed it: sums of floats, never rounded."""
    if rng.random() < 0.05:
        return 0.1 + 0.2
    return sum(rng.uniform(0, hi) / 3 for _ in range(3))


def lamports(rng: random.Random) -> int:
    """INTEGER lamports (1 SOL = 1e9), occasionally at the 64-bit edge."""
    if rng.random() < 0.03:
        return rng.choice((0, 2**63 - 1, 1))
    return rng.randrange(1_000, 500 * 10**9)


def text(rng: random.Random, prefix: str = "") -> str:
    """Free text that is unicode-heavy about half the time."""
    words = ["pump", "dump", "ape", "hodl", "ser", "wagmi", "rug", "alpha", "gm", "lfg"]
    body = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
    if rng.random() < 0.5:
        body = f"{body} {rng.choice(UNICODE_SNIPPETS)}"
    return prefix + body


def maybe(rng: random.Random, value: object, p_null: float = 0.1) -> object:
    """`value`, or NULL with probability p_null."""
    return None if rng.random() < p_null else value


def json_text(rng: random.Random) -> str:
    """JSON kept in a TEXT column, with nested data and non-ASCII left unescaped sometimes."""
    doc = {
        "slippage_bps": rng.choice([50, 100, 300]),
        "route": [rng.choice(SYMBOLS) for _ in range(rng.randint(1, 3))],
        "note": rng.choice(UNICODE_SNIPPETS),
        "ratio": rng.choice(EDGE_REALS[2:5]),
        "flags": {"dry_run": rng.random() < 0.2, "v": None},
    }
    return json.dumps(doc, ensure_ascii=rng.random() < 0.5)


def blob(rng: random.Random, max_len: int = 300) -> bytes:
    """Bytes with embedded NULs; sometimes empty, sometimes all NUL, sometimes pickle-like."""
    pick = rng.random()
    if pick < 0.05:
        return b""
    if pick < 0.12:
        return b"\x00" * rng.randint(1, 64)
    if pick < 0.3:
        # pickled values, as one real cache stored: protocol header, NULs inside, STOP byte
        return b"\x80\x04\x95" + struct.pack("<Q", rng.randint(0, 999)) + b"}\x94." + b"\x00"
    raw = bytearray(rng.randbytes(rng.randint(1, max_len)))
    for _ in range(max(1, len(raw) // 10)):
        raw[rng.randrange(len(raw))] = 0
    return bytes(raw)


def embedding(rng: random.Random, dims: int = 16) -> bytes:
    """Packed float32 vector: realistic BLOB content that naturally contains NUL bytes."""
    vals = [0.0 if rng.random() < 0.2 else rng.uniform(-1, 1) for _ in range(dims)]
    return struct.pack(f"<{dims}f", *vals)
