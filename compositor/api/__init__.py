"""The serve process's HTTP face: our REST API, LiveKit's Twirp Egress API and its request shapes, OpenAPI."""

from .rest import make_app

__all__ = ["make_app"]
