"""sqlite-cdc: capture changes in live legacy SQLite files and replay them into consolidated ones."""

__version__ = "0.1.0"
