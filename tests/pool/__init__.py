"""The bots' pool and connections."""
