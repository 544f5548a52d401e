"""``python -m vsr`` runs the command line."""

from .cli import entry

entry()
