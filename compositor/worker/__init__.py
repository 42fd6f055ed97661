"""The worker process: `compositor record` (one egress) and `compositor upload` (a delivery resumed)."""

from .main import WorkerOptions, deliver, record

__all__ = ["WorkerOptions", "deliver", "record"]
