"""The fixture application is data that `cdc refs` parses, never tests to import."""

collect_ignore_glob = ["*"]
