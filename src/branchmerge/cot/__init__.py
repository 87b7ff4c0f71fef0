"""CoT processors: each reads and writes Trace records and adds its field."""
