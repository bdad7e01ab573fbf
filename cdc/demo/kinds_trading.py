"""The trading-side bots: the trader (WAL file) and the buy tracker (WITHOUT ROWID watchlist).

Each op models a write pattern a replicator has to get right, not just "some traffic": upserts
with `INSERT OR REPLACE` (which, on a clash with a non-key UNIQUE column, silently deletes a
*different* row), whole-table delete-and-reinsert, an UPDATE of an INTEGER primary key, a
single-row `CHECK (id = 1)` table, REAL prices with edge values and INTEGER lamports.
"""

from __future__ import annotations

from cdc.demo import schema
from cdc.demo import values as v
from cdc.demo.botlib import Bot
from cdc.demo.schema import quote


class TraderBot(Bot):
    """The trading engine on the WAL file `data/trading.db`."""

    kind = "trader"
    spec = schema.TRADING
    OPS = (
        ("upsert_trade", 5),
        ("update_prices", 5),
        ("open_position", 2),
        ("close_position", 1),
        ("delete_trade", 1),
        ("save_positions", 1),
        ("add_order", 2),
        ("rekey_order", 1),
        ("update_scorecard", 2),
        ("upsert_daily_stats", 1),
    )

    def drift(self) -> None:
        self.add_column("positions", "notes", "TEXT")

    def upsert_trade(self) -> None:
        """INSERT OR REPLACE on the key, and sometimes on another row's UNIQUE tx_signature."""
        r = self.rng
        with self.tx() as c:
            tid = self.pick_key(c, "trades", "id") if r.random() < 0.3 else None
            sig = "trd-" + v.b58(r, 86)
            if r.random() < 0.1:  # steal another row's signature: REPLACE deletes that row
                sig = self.pick_key(c, "trades", "tx_signature") or sig
            c.execute(
                "INSERT OR REPLACE INTO trades (id, symbol, token_mint, side, amount_sol,"
                " amount_tokens, price, timestamp, tx_signature, position_id, user_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tid or f"trd_{r.getrandbits(48):012x}",
                    r.choice(v.SYMBOLS),
                    v.b58(r),
                    r.choice(("buy", "sell")),
                    v.money(r),
                    v.real(r, 0, 1e9),
                    v.real(r, 1e-9, 50),
                    v.now_iso(),
                    sig,
                    v.maybe(r, self.pick_key(c, "positions", "id"), 0.3),
                    r.choice((0, r.randrange(10**10))),
                ),
            )

    def update_prices(self) -> None:
        """REAL price ticks on a few open positions (edge values included)."""
        r = self.rng
        with self.tx() as c:
            ids = [x for (x,) in c.execute("SELECT id FROM positions ORDER BY random() LIMIT 4")]
            for pid in ids:
                c.execute(
                    "UPDATE positions SET current_price = ?, pnl_pct = ? WHERE id = ?",
                    (v.real(r, 1e-6, 20, edge=0.15), v.maybe(r, v.real(r, -95, 900)), pid),
                )
            if ids and r.random() < 0.3 and self.has_column(c, "positions", "notes"):
                c.execute("UPDATE positions SET notes = ? WHERE id = ?", (v.text(r), ids[0]))

    def open_position(self) -> None:
        r = self.rng
        with self.tx() as c:
            c.execute(
                "INSERT INTO positions (id, symbol, token_mint, entry_price, entry_amount_sol,"
                " entry_lamports, meta_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    f"pos_{r.getrandbits(48):012x}",
                    r.choice(v.SYMBOLS),
                    v.b58(r),
                    v.real(r, 1e-6, 20),
                    v.money(r),
                    v.lamports(r),
                    v.maybe(r, v.json_text(r)),
                ),
            )

    def close_position(self) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM positions WHERE id = ?", (self.pick_key(c, "positions", "id"),))

    def delete_trade(self) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM trades WHERE id = ?", (self.pick_key(c, "trades", "id"),))

    def save_positions(self) -> None:
        """The real 'save': delete every row of `positions` and re-insert them all, in one
        transaction (whole-table churn; most rows come back unchanged)."""
        r = self.rng
        with self.tx() as c:
            cur = c.execute("SELECT * FROM positions")
            cols = [d[0] for d in cur.description]
            rows = [list(row) for row in cur.fetchall()]
            price = cols.index("current_price")
            for row in r.sample(rows, min(3, len(rows))):
                row[price] = v.real(r, 1e-6, 20)
            c.execute("DELETE FROM positions")
            names = ", ".join(quote(x) for x in cols)
            marks = ", ".join("?" * len(cols))
            c.executemany(f"INSERT INTO positions ({names}) VALUES ({marks})", rows)

    def add_order(self) -> None:
        """AUTOINCREMENT insert; created_at left to DEFAULT CURRENT_TIMESTAMP."""
        r = self.rng
        with self.tx() as c:
            c.execute(
                "INSERT INTO orders (order_ref, order_json, amount_lamports) VALUES (?, ?, ?)",
                (f"ord-{r.getrandbits(40):010x}", v.json_text(r), v.lamports(r)),
            )

    def rekey_order(self) -> None:
        """An UPDATE that changes an INTEGER PRIMARY KEY (the rowid itself)."""
        with self.tx() as c:
            c.execute(
                "UPDATE orders SET id = (SELECT max(id) + 1 FROM orders) WHERE id = ?",
                (self.pick_key(c, "orders", "id"),),
            )

    def update_scorecard(self) -> None:
        """The single-row table pinned by CHECK (id = 1): UPDATE or INSERT OR REPLACE."""
        r = self.rng
        with self.tx() as c:
            if r.random() < 0.5:
                c.execute(
                    "UPDATE scorecard SET total_trades = total_trades + 1,"
                    " total_pnl_sol = total_pnl_sol + ?, last_updated = ? WHERE id = 1",
                    (v.real(r, -2, 3), v.now_iso()),
                )
            else:
                c.execute(
                    "INSERT OR REPLACE INTO scorecard (id, total_trades, winning_trades,"
                    " total_pnl_sol, largest_win_sol, win_rate, last_updated)"
                    " VALUES (1, ?, ?, ?, ?, ?, ?)",
                    (
                        r.randint(300, 900),
                        r.randint(0, 300),
                        v.money(r, 900),
                        v.real(r, edge=0.3),
                        0.1 + 0.2,
                        v.now_iso(),
                    ),
                )

    def upsert_daily_stats(self) -> None:
        r = self.rng
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO daily_stats (date, trades_opened, trades_closed,"
                " total_pnl_sol, win_rate) VALUES (?, ?, ?, ?, ?)",
                (
                    v.now_iso()[:10],
                    r.randint(0, 40),
                    r.randint(0, 40),
                    v.real(r, -20, 60),
                    v.maybe(r, v.real(r, 0, 1)),
                ),
            )


class BuyTrackerBot(Bot):
    """The buy tracker: inserts buys into its own `trades` and keeps a WITHOUT ROWID watchlist."""

    kind = "buy_tracker"
    spec = schema.BUY_TRACKER
    OPS = (
        ("record_buy", 5),
        ("track_token", 2),
        ("update_token_price", 2),
        ("untrack_token", 1),
        ("delete_buy", 1),
    )

    def drift(self) -> None:
        self.add_column("trades", "is_whale", "INTEGER DEFAULT 0")

    def record_buy(self) -> None:
        r = self.rng
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO trades (id, token_symbol, token_mint, buyer_wallet,"
                " amount_lamports, price_usd, tx_signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    f"trd_{r.getrandbits(48):012x}",
                    r.choice(v.SYMBOLS),
                    self.pick_key(c, "tracked_tokens", "mint") or v.b58(r),
                    v.b58(r),
                    v.lamports(r),
                    v.maybe(r, v.real(r, 1e-9, 300)),
                    "buy-" + v.b58(r, 86),
                ),
            )

    def track_token(self) -> None:
        r = self.rng
        with self.tx() as c:
            mint = self.pick_key(c, "tracked_tokens", "mint") if r.random() < 0.5 else None
            c.execute(
                "INSERT OR REPLACE INTO tracked_tokens (mint, symbol, min_buy_lamports,"
                " last_price_usd) VALUES (?, ?, ?, ?)",
                (mint or v.b58(r), r.choice(v.SYMBOLS), v.lamports(r), v.maybe(r, v.real(r))),
            )

    def update_token_price(self) -> None:
        with self.tx() as c:
            c.execute(
                "UPDATE tracked_tokens SET last_price_usd = ? WHERE mint = ?",
                (v.real(self.rng, edge=0.2), self.pick_key(c, "tracked_tokens", "mint")),
            )

    def untrack_token(self) -> None:
        with self.tx() as c:
            c.execute(
                "DELETE FROM tracked_tokens WHERE mint = ?",
                (self.pick_key(c, "tracked_tokens", "mint"),),
            )

    def delete_buy(self) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM trades WHERE id = ?", (self.pick_key(c, "trades", "id"),))
