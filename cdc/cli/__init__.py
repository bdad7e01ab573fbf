"""The `cdc` command, a thin shell over the engine: `base` (the group, `-c`, the one
error printer), `main` (the commands and `main()`), `controls`, `history`,
`planning`. The engine never imports it.
"""
