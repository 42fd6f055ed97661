"""The serve process's core: the service (state, admission, workers, webhooks, auto egress) and its settings."""

from .service import Service
from .settings import PUBLISHED_SECRETS, Settings, load_settings

__all__ = ["PUBLISHED_SECRETS", "Service", "Settings", "load_settings"]
