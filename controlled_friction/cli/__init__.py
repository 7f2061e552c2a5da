"""The `controlled-friction` command line (typer + rich)."""
