"""Planning: config, inventory, mapping, DDL, the corpus's own plan."""
