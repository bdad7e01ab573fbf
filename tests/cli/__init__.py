"""The command line: JSON output, bad input, the demo."""
