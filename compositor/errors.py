"""Typed errors: every failure carries a stable code and a human message.

Codes are part of the contract (events, exit status, later the API and
webhooks), so they never change meaning once published.
"""

from __future__ import annotations


class CompositorError(Exception):
    """Base of every error the compositor reports to a caller."""

    code = "INTERNAL"
    #: Process exit status of `compositor record` when this error ends the job.
    exit_status = 1
    #: HTTP status when the API reports this error.
    http_status = 500
    #: Seconds a client should wait before trying again (HTTP Retry-After), if any.
    retry_after: int | None = None

    def __init__(self, message: str, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict:
        """The error as it appears in events and API responses."""
        out: dict = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class InvalidRequest(CompositorError):
    """The request is malformed: bad field, unknown layout or preset, bad colour."""

    code = "INVALID_ARGUMENT"
    exit_status = 2
    http_status = 400


class OutputNotWritable(CompositorError):
    code = "OUTPUT_NOT_WRITABLE"
    exit_status = 2


class WebUrlUnreachable(CompositorError):
    code = "WEB_URL_UNREACHABLE"
    exit_status = 2


class MissingDependency(CompositorError):
    """A system program the pipeline needs is not installed."""

    code = "MISSING_DEPENDENCY"
    exit_status = 3


class ProcessFailed(CompositorError):
    """A child process (display, audio, browser, encoder) failed or died."""

    code = "PROCESS_FAILED"


class DisplayFailed(ProcessFailed):
    code = "DISPLAY_FAILED"


class AudioFailed(ProcessFailed):
    code = "AUDIO_FAILED"


class BrowserFailed(ProcessFailed):
    code = "BROWSER_FAILED"


class EncoderFailed(ProcessFailed):
    code = "ENCODER_FAILED"


class StartTimeout(CompositorError):
    """The page never signalled START_RECORDING."""

    code = "START_TIMEOUT"


class TemplateFailed(CompositorError):
    """The layout is broken: its template does not render, its script throws, a file it needs fails to
    load, or it never signals START_RECORDING. The message is the page's own."""

    code = "TEMPLATE_ERROR"


class OutputInvalid(CompositorError):
    """The finished file failed validation (unreadable, empty, wrong streams)."""

    code = "OUTPUT_INVALID"


class Aborted(CompositorError):
    """Stopped before recording began: there is no file."""

    code = "ABORTED"
    exit_status = 130


class Unsupported(CompositorError):
    code = "UNSUPPORTED"
    http_status = 400


class NotFound(CompositorError):
    code = "NOT_FOUND"
    http_status = 404


class Unauthenticated(CompositorError):
    code = "UNAUTHENTICATED"
    http_status = 401


class RequestTimeout(CompositorError):
    code = "REQUEST_TIMEOUT"
    http_status = 408


class Forbidden(CompositorError):
    code = "FORBIDDEN"
    http_status = 403


class Conflict(CompositorError):
    """The egress is in a state that does not allow this (e.g. delete while active)."""

    http_status = 409

    def __init__(self, code: str, message: str, **kw):
        super().__init__(message, **kw)
        self.code = code


def refusal(code: str | None, message: str | None, details: dict | None = None) -> CompositorError:
    """A worker's refusal of a command as its caller gets it: a bad argument is 400, anything else 409."""
    if code == "INVALID_ARGUMENT":
        return InvalidRequest(message or "refused", details=details or {})
    return Conflict(code or "REFUSED", message or "the worker refused the change")


class StreamFailed(CompositorError):
    """Every live destination of a stream-only egress failed for good; the code is theirs (RTMP_…, SRT_…)."""

    code = "STREAM_FAILED"

    def __init__(self, message: str, code: str | None = None, **kw):
        super().__init__(message, **kw)
        self.code = code or self.code


class CapacityExceeded(CompositorError):
    code = "CAPACITY_EXCEEDED"
    http_status = 503
    retry_after = 10


class Draining(CompositorError):
    code = "DRAINING"
    http_status = 503
    retry_after = 30


class Unavailable(CompositorError):
    """The cluster's shared state cannot be reached (or refuses this node): try again, or another node."""

    code = "UNAVAILABLE"
    http_status = 503
    retry_after = 5
