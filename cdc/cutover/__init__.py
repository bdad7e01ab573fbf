"""The journey's end: cutover (`cutover`, its proof under the fence `fence_proof`), the
way back (`backflow`, `rollback`), `finalize`, and the lag a cutover waits on (`lag`).

Imports everything below it (docs/architecture.md, Layers); nothing below imports it.
"""
