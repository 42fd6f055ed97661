"""compositor: records and live-streams video rooms through a real browser."""

__version__ = "0.1.0"
