"""The `messenger` command line."""
