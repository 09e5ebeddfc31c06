"""Subcommands of the heron-edge CLI (kept import-light: heavy imports happen inside run())."""
