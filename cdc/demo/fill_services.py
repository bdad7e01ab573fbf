"""Rows for the demo's analytics- and cache-bound files (LLM costs, metrics, rate limiter,
file cache).

Split from the generator only to keep modules small. Notable on purpose: the table with no
declared key gets exact duplicate rows (a replicator must not collapse them), and the untyped
column of the oddly named table holds every storage class, including a -0.0 that keeps its sign.
"""

from __future__ import annotations

import random
import sqlite3

from cdc.demo import values as v
from cdc.demo.schema import ODD_TABLE, Row, insert_rows


def fill_llm_costs(rng: random.Random, conn: sqlite3.Connection) -> None:
    usage: list[Row] = []
    for i in range(400):
        provider, model = rng.choice(v.PROVIDERS)
        ok = rng.random() > 0.1
        usage.append(
            (
                v.ts(i * 200),
                provider,
                model,
                rng.randint(0, 8000),
                rng.randint(0, 4000),
                v.money(rng, 0.05),
                v.maybe(rng, v.real(rng, 50, 30_000)),
                int(ok),
                None if ok else v.text(rng, "error: "),
                v.maybe(rng, v.json_text(rng), 0.3),
                v.ts(i * 200 + 1),
            )
        )
    insert_rows(
        conn,
        "llm_usage",
        "timestamp, provider, model, input_tokens, output_tokens, cost_usd, latency_ms,"
        " success, error, metadata, created_at",
        usage,
    )
    insert_rows(
        conn,
        "llm_daily_stats",
        "date, provider, model, total_requests, total_cost_usd, avg_latency_ms",
        [
            (
                v.ts(d * 86400)[:10],
                p,
                m,
                rng.randint(0, 900),
                v.money(rng, 5),
                v.real(rng, 80, 9000),
            )
            for d in range(90)
            for p, m in v.PROVIDERS
        ],
    )


def fill_metrics(rng: random.Random, conn: sqlite3.Connection) -> None:
    m1: list[Row] = []
    for i in range(420):
        total = rng.randint(0, 10_000)
        failed = rng.randint(0, total // 10 + 1)
        m1.append(
            (
                v.ts((i // len(v.COMPONENTS)) * 60),
                v.COMPONENTS[i % len(v.COMPONENTS)],
                total,
                failed,
                failed / total if total else 0.0,
                v.real(rng, 1, 500),
                v.maybe(rng, v.real(rng, 100, 9000)),
            )
        )
    insert_rows(
        conn,
        "metrics_1m",
        "timestamp, component, total_requests, failed_requests, error_rate, latency_p50,"
        " latency_p99",
        m1,
    )
    insert_rows(
        conn,
        "alert_history",
        "timestamp, component, metric, value, threshold, severity, resolved_at",
        [
            (
                v.ts(i * 1800),
                rng.choice(v.COMPONENTS),
                rng.choice(("error_rate", "latency_p99")),
                v.real(rng, 0, 1, edge=0.2),
                v.real(rng, 0, 1),
                rng.choice(("warning", "critical")),
                v.maybe(rng, v.ts(i * 1800 + 300), 0.5),
            )
            for i in range(200)
        ],
    )
    corr = [
        (v.ts(i * 3600), rng.choice(v.COMPONENTS), v.real(rng, -1, 1), rng.randint(1, 5000))
        for i in range(300)
    ]
    # a table without a key can hold identical rows; a replicator must not collapse them
    insert_rows(
        conn,
        "component_correlations",
        "timestamp, component, correlation, sample_size",
        corr + corr[:6],
    )
    insert_rows(
        conn,
        ODD_TABLE,
        'id, "select", "from", raw',
        [
            (i, v.text(rng, "SELECT * FROM "), v.real(rng, edge=0.3), _raw(rng))
            for i in range(1, 201)
        ],
    )


def _raw(rng: random.Random) -> object:
    """An untyped column: every storage class, and -0.0 survives here (no REAL affinity)."""
    return rng.choice((None, -0.0, 1e-300, 2**63 - 1, "تجربة 🚀", v.blob(rng, 40), 0.1 + 0.2))


def fill_rate_limiter(rng: random.Random, conn: sqlite3.Connection) -> None:
    names = [
        f"{api}:{scope}"
        for api in ("x", "tg", "jup", "helius", "birdeye")
        for scope in ("global", "user", "ip", "burst", "read", "write", "search", "stream")
    ]
    insert_rows(
        conn,
        "rate_configs",
        "name, requests_per_second, burst_size, strategy, enabled, metadata",
        [
            (
                n,
                v.real(rng, 0.1, 50),
                rng.randint(1, 100),
                rng.choice(("token", "sliding")),
                rng.randint(0, 1),
                v.maybe(rng, v.json_text(rng), 0.5),
            )
            for n in names
        ],
    )
    insert_rows(
        conn,
        "request_log",
        "request_id, endpoint, timestamp, allowed, wait_time_ms, limit_name",
        [
            (
                f"{rng.getrandbits(64):016x}",
                rng.choice(("/2/tweets", "/sendMessage", "/quote", "/swap", "/v0/addresses")),
                v.ts(i * 7.5),
                rng.randint(0, 1),
                v.real(rng, 0, 2000),
                v.maybe(rng, rng.choice(names)),
            )
            for i in range(400)
        ],
    )
    pairs = rng.sample([(n, v.ts(d * 86400)[:10]) for n in names for d in range(30)], 320)
    insert_rows(
        conn,
        "limit_stats",
        "name, date, total_requests, limited_requests, avg_wait_time_ms",
        [(n, d, rng.randint(0, 99_999), rng.randint(0, 99), v.real(rng, 0, 500)) for n, d in pairs],
    )


def fill_file_cache(rng: random.Random, conn: sqlite3.Connection) -> None:
    namespaces = ("default", "prices", "tweets", "llm", "λ-ns")
    insert_rows(
        conn,
        "cache_entries",
        "key, value, created_at, expires_at, namespace, tags",
        [
            (
                f"{rng.choice(namespaces)}:{i}:{rng.choice(('', '🚀', 'عربي', 'k'))}",
                v.blob(rng),
                1_704_067_200.0 + i * 1.5,
                1_704_067_200.0 + i * 1.5 + rng.choice((60.0, 3600.0, 0.1 + 0.2, 1e-300)),
                v.maybe(rng, rng.choice(namespaces)),
                v.maybe(rng, v.json_text(rng), 0.4),
            )
            for i in range(300)
        ],
    )
