"""The CLI commands, one module each; `cli.py` assembles them into the typer app."""
