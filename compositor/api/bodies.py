"""Reading request bodies with a deadline, so a client that trickles one cannot hold a handler forever."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import RequestTimeout


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The request's body, if the client sends it within `timeout` seconds (RequestTimeout, 408, otherwise)."""
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
