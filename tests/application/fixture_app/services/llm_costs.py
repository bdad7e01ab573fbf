"""What each LLM call cost."""

import os

import aiosqlite

DB_PATH = os.path.join(os.path.dirname(__file__), "..", "data", "llm_costs.db")

COSTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS costs (
    id INTEGER PRIMARY KEY,
    model TEXT,
    usd REAL
);
CREATE INDEX IF NOT EXISTS costs_model ON costs(model);
"""


async def init() -> None:
    async with aiosqlite.connect(DB_PATH) as db:
        await db.executescript(COSTS_SCHEMA)


async def add_cost(model: str, usd: float) -> None:
    async with aiosqlite.connect(DB_PATH) as db:
        await db.execute("INSERT INTO costs (model, usd) VALUES (?, ?)", (model, usd))
        await db.commit()


async def cached(prompt: str):
    async with aiosqlite.connect(DB_PATH) as db:
        cur = await db.execute("SELECT answer FROM llm_cache WHERE prompt = ?", (prompt,))
        return await cur.fetchone()


async def by_model():
    async with aiosqlite.connect(DB_PATH) as db:
        return await db.execute_fetchall("SELECT model, sum(usd) FROM costs GROUP BY model HAVING")
