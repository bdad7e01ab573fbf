"""The running daemon: crashes, disk full, drift, controls, status, security."""
