"""The `pirm` command line."""
