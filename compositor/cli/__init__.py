"""The command line: argument parsing only; each command runs in its own process's package."""

from .main import main

__all__ = ["main"]
