"""The running daemon (`daemon`) and what it tells: `status`, `status_view`, `metrics`."""
