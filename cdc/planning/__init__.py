"""What exists and where it goes: the plan's types (`plan`), resolving `cdc.toml`
and the files into a plan (`resolve`), the targets' DDL (`ddl`), and the operator's
planning commands (`discover`, `survey`, `inventory_report`, `mapping`, `planner`,
`schema_out`).

Imports the shared vocabulary and the change log (docs/architecture.md, Layers).
"""
