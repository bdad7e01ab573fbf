"""Cutover, the way back, finalize, and every kind of stale writer."""
