"""Reading request bodies with a deadline, so a client that trickles one cannot hold a handler forever, and
validating them into our models."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..errors import InvalidRequest, RequestTimeout
from ..request import first_error


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The request's body, if the client sends it within `timeout` seconds (RequestTimeout, 408, otherwise)."""
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None


def validated(model: type[BaseModel], data: dict) -> Any:
    """`data` as `model`, or InvalidRequest naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field = ".".join(str(p) for p in exc.errors()[0].get("loc", ()))
        raise InvalidRequest(first_error(exc), details={"field": field} if field else {}) from None
