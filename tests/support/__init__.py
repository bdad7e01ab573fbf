"""Libraries used by fixtures and tests, no test in them; bots run as real processes.

`corpus` (the jarvis legacy corpus and its plan), `pipeline` (the daemon's two halves driven
step by step), `planning` (the `cdc inventory` / `cdc plan` commands as an operator runs
them), and the bots: `workload` (writes like the legacy bots), `cutover_bot` (writes across
a cutover and a rollback), `lock_bot` (holds and contends for SQLite locks),
`target_bot` (writes like a switched bot to a consolidated target). Run a bot as
`python -m tests.support.<bot> ...` with the repository root as working directory.
"""
