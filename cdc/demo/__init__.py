"""A self-contained demo world: small legacy SQLite files shaped like a real bot system's, plus
bot processes that keep writing them the way those bots did (`python -m cdc.demo.bots`), so the
replicator can be shown, and tested, against live, awkward, externally written files.
"""
