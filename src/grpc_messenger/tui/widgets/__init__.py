"""The inbox screen's widgets, one per file."""
