"""The change log: segment files of checksummed frames (`segments`), the frame
format and damage rules (`frames`), `cdc log check` (`check`), what is retained and
archived (`retained`), values too big for one frame (`bigrows`).

Imports only the shared vocabulary of `cdc/` (docs/architecture.md, Layers).
"""
