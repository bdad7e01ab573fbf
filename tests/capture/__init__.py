"""Capture: triggers, hooks, fences against every writer, keys at the edges."""
