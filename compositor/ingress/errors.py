"""What ends an ingress in ERROR: each failure has a stable code (the ERROR event's `code`)."""

from __future__ import annotations

from ..errors import CompositorError


class IngressError(CompositorError):
    """An ingress cannot go on."""

    code = "INGRESS_FAILED"


class InputUnreachable(IngressError):
    """The input cannot be opened (nothing there, refused, timed out) or its connection broke."""

    code = "INPUT_UNREACHABLE"


class InputInvalid(IngressError):
    """The input opened but holds nothing this worker can decode."""

    code = "INPUT_INVALID"


class InputStalled(IngressError):
    """No media came for the job's `stall_s` seconds."""

    code = "INPUT_STALLED"


class RoomUnreachable(IngressError):
    """Joining the room (or publishing into it) failed."""

    code = "ROOM_UNREACHABLE"


class RoomLost(IngressError):
    """The room dropped the ingress's participant (removed, the room closed, the server went away)."""

    code = "ROOM_DISCONNECTED"
