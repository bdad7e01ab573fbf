"""Reading the past: history and rebuild."""
