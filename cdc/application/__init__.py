"""The application side of a consolidation: the code that still names legacy databases,
and the queries it runs against them.

Moving the data is half of the job; the bots' code must then point at the consolidated
files and read the same answers there, as fast. `names` says what the plan makes of every
legacy file and table; `refs` finds every reference to them in Python code (paths and SQL,
parsed, not grepped) and `refs_fix` rewrites what is unambiguous; `queries` runs the
application's queries on both sides and compares answers, latencies and plans. Operations
layer: reads the plan and the stage records, never the daemon's moving parts.
"""
