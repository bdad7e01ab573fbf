"""Rows for the demo's core-bound files (trading, buy tracker, Telegram, X memory).

Split from the generator only to keep modules small; every value comes from `values` so the
edge cases (REAL extremes, unicode, NUL-laden BLOBs, NULLs) are the same ones the bots write.
Trade ids `trd_00000..` are deliberately identical in trading.db and the buy tracker's file:
the two `trades` tables are merged, and only the tag column can tell those rows apart.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3

from cdc.demo import values as v
from cdc.demo.schema import Row, insert_rows


def fill_trading(rng: random.Random, conn: sqlite3.Connection) -> None:
    # one after the other, in this order: each draws from the same `rng`
    _trading_positions(rng, conn)
    _trading_trades(rng, conn)
    _trading_orders(rng, conn)
    _trading_stats(rng, conn)


def _trading_positions(rng: random.Random, conn: sqlite3.Connection) -> None:
    statuses = ("open", "open", "closed", "stopped", "tp_hit")
    insert_rows(
        conn,
        "positions",
        "id, symbol, token_mint, entry_price, current_price, entry_amount_sol,"
        " entry_lamports, pnl_pct, status, meta_json, opened_at",
        [
            (
                f"pos_{i:05d}",
                rng.choice(v.SYMBOLS),
                v.b58(rng),
                v.real(rng, 1e-6, 20.0),
                v.maybe(rng, v.real(rng, 1e-6, 20.0)),
                v.money(rng),
                v.lamports(rng),
                v.maybe(rng, v.real(rng, -95.0, 900.0)),
                rng.choice(statuses),
                v.maybe(rng, v.json_text(rng)),
                v.ts(i * 600),
            )
            for i in range(220)
        ],
    )


def _trading_trades(rng: random.Random, conn: sqlite3.Connection) -> None:
    # ids trd_00000.. deliberately overlap buy_tracker's: a merge must tell them apart by tag
    insert_rows(
        conn,
        "trades",
        "id, symbol, token_mint, side, amount_sol, amount_tokens, price, timestamp,"
        " tx_signature, position_id, user_id",
        [
            (
                f"trd_{i:05d}",
                rng.choice(v.SYMBOLS),
                v.b58(rng),
                rng.choice(("buy", "sell")),
                v.money(rng),
                v.real(rng, 0, 1e9),
                v.real(rng, 1e-9, 50),
                v.ts(i * 300),
                v.maybe(rng, "trd-" + v.b58(rng, 86)),
                v.maybe(rng, f"pos_{rng.randrange(220):05d}", 0.3),
                rng.choice(v.EDGE_INTS[:2] + (rng.randrange(10**10),)),
            )
            for i in range(300)
        ],
    )


def _trading_orders(rng: random.Random, conn: sqlite3.Connection) -> None:
    insert_rows(
        conn,
        "orders",
        "order_ref, order_json, amount_lamports, created_at",
        [(f"ord-{i:05d}", v.json_text(rng), v.lamports(rng), v.ts(i * 90)) for i in range(280)],
    )
    # gaps and a sqlite_sequence ahead of max(id), as a live AUTOINCREMENT table has
    conn.execute("DELETE FROM orders WHERE id % 7 = 0 OR id > 270")


def _trading_stats(rng: random.Random, conn: sqlite3.Connection) -> None:
    insert_rows(
        conn,
        "scorecard",
        "id, total_trades, winning_trades, total_pnl_sol, largest_win_sol, win_rate, last_updated",
        [(1, 300, 171, v.money(rng, 500), 1e-300, 171 / 300, v.ts(0))],
    )
    insert_rows(
        conn,
        "daily_stats",
        "date, trades_opened, trades_closed, total_pnl_sol, win_rate",
        [
            (
                v.ts(d * 86400)[:10],
                rng.randint(0, 40),
                rng.randint(0, 40),
                v.real(rng, -20, 60),
                v.maybe(rng, v.real(rng, 0, 1)),
            )
            for d in range(300)
        ],
    )
    insert_rows(conn, "test", "id, note", [(i, v.text(rng, "test ")) for i in range(1, 201)])


def fill_buy_tracker(rng: random.Random, conn: sqlite3.Connection) -> None:
    mints = [v.b58(rng) for _ in range(200)]
    insert_rows(
        conn,
        "trades",
        "id, token_symbol, token_mint, buyer_wallet, amount_lamports, price_usd,"
        " tx_signature, detected_at",
        [
            (
                f"trd_{i:05d}",
                rng.choice(v.SYMBOLS),
                rng.choice(mints),
                v.b58(rng),
                v.lamports(rng),
                v.maybe(rng, v.real(rng, 1e-9, 300)),
                "buy-" + v.b58(rng, 86),
                v.ts(i * 120),
            )
            for i in range(300)
        ],
    )
    insert_rows(
        conn,
        "tracked_tokens",
        "mint, symbol, min_buy_lamports, last_price_usd, added_at",
        [
            (m, rng.choice(v.SYMBOLS), v.lamports(rng), v.maybe(rng, v.real(rng)), v.ts(i))
            for i, m in enumerate(mints)
        ],
    )


def fill_telegram(rng: random.Random, conn: sqlite3.Connection) -> None:
    uids = rng.sample(range(10_000, 7_000_000_000), 250)
    langs = ("en", "ar", "he", "ja", "ru", None)
    insert_rows(
        conn,
        "users",
        "user_id, username, first_name, language, message_count, prefs_json, last_seen",
        [
            (
                uid,
                v.maybe(rng, f"user_{i}" if i % 5 else f"ユーザー_{i}🚀"),
                v.text(rng)[:40],
                rng.choice(langs),
                rng.randint(0, 5000),
                v.maybe(rng, v.json_text(rng), 0.4),
                v.ts(i * 3600),
            )
            for i, uid in enumerate(uids)
        ],
    )
    chats = [-1001234567890, -1009876543210, 0] + uids[:5]
    insert_rows(
        conn,
        "messages",
        "user_id, username, role, content, timestamp, chat_id",
        [
            (
                rng.choice(uids),
                v.maybe(rng, f"user_{rng.randrange(250)}"),
                rng.choice(("user", "assistant")),
                v.text(rng),
                v.ts(i * 45),
                rng.choice(chats),
            )
            for i in range(420)
        ],
    )
    keys = ("wallet", "risk", "fav_token", "timezone", "name", "语言")
    pairs = rng.sample([(u, k) for u in uids for k in keys], 300)
    insert_rows(
        conn,
        "memories",
        "user_id, key, value, created_at, updated_at",
        [
            (u, k, v.text(rng), v.ts(i * 60), v.maybe(rng, v.ts(i * 61)))
            for i, (u, k) in enumerate(pairs)
        ],
    )


def fill_x_memory(rng: random.Random, conn: sqlite3.Connection) -> None:
    insert_rows(
        conn,
        "tweets",
        "tweet_id, content, category, cashtags, posted_at, engagement_likes",
        [
            (
                str(1_700_000_000_000_000_000 + i * 7919),
                v.text(rng),
                rng.choice(("market", "alpha", "shitpost", None)),
                " ".join(f"${rng.choice(v.SYMBOLS)}" for _ in range(rng.randint(0, 3))),
                v.ts(i * 900),
                rng.randint(0, 50_000),
            )
            for i in range(300)
        ],
    )
    insert_rows(
        conn,
        "users",
        "handle, user_id, first_seen, interaction_count, sentiment, notes",
        [
            (
                f"@handle_{i}",
                str(rng.randrange(10**18)),
                v.ts(i * 777),
                rng.randint(0, 300),
                rng.choice(("neutral", "bullish", "bearish")),
                v.maybe(rng, v.text(rng), 0.5),
            )
            for i in range(260)
        ],
    )
    rows: list[Row] = []
    for i in range(220):
        content = v.text(rng, f"memory {i}: ")
        rows.append(
            (
                f"{rng.getrandbits(128):032x}",
                content,
                hashlib.sha256(f"{i}:{content}".encode()).hexdigest(),
                rng.choice(("fact", "episode", "preference")),
                rng.randint(0, 10),
                v.maybe(rng, v.json_text(rng)),
                v.maybe(rng, v.embedding(rng), 0.25),
                v.ts(i * 500),
            )
        )
    insert_rows(
        conn,
        "memories",
        "id, content, content_hash, memory_type, priority, tags, embedding, created_at",
        rows,
    )
