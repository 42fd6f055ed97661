"""The serve process (`compositor serve`): the service behind its HTTP API, until SIGINT/SIGTERM drains it."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from ..service import Service, Settings
from .rest import make_app

log = logging.getLogger(__name__)


async def serve(settings: Settings, host: str, port: int) -> int:
    """Recover what a previous run left, listen on host:port (0: any free port, printed), run until a signal,
    then drain: no new work, running egresses finish their files and uploads."""
    service = Service.from_settings(settings)
    resumed, settled = await service.open()
    for rec in resumed:
        log.warning("resuming the delivery of %s, left unfinished by a previous run", rec.id)
    for rec in settled:
        log.warning("settled %s left running by a previous run", rec.id)
    # keepalive_timeout also bounds how long a new connection may take to send its first request's headers.
    runner = web.AppRunner(make_app(service), access_log=None, keepalive_timeout=settings.request_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = site._server.sockets[0].getsockname()[:2]
    print(f"compositor serve: listening on http://{bound_host}:{bound_port} (data in {settings.data_dir})",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("compositor serve: draining", flush=True)
    await service.shutdown()
    await runner.cleanup()
    return 0
