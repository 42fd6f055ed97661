"""`compositor` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from pydantic import ValidationError

from .cli_args import add_page_flags, fold_page_flags, outbound_policy
from .config import DEFAULT_SAMPLE_RATE, WARM_SIZE, resolve
from .errors import Aborted, CompositorError, Conflict, InvalidRequest
from .events import EventSink
from .layouts import builtin_layouts
from .layouts_cli import layouts_parser, run_layouts
from .outbound_gate import OutboundGate
from .pipeline.recorder import WARM, WORKDIR_PREFIX, Outputs, Recorder, open_stage, sweep_stale_workdirs
from .presets import DEFAULT_PRESET, preset_names
from .request import RecordRequest, first_error, parse_participant
from .storage.delivery import Delivery, find_manifest, read_manifest, result_of


def _record_parser(sub) -> None:
    p = sub.add_parser("record", help="record one room or web page to a file",
                       description="Record a room (or any web page) through Xvfb + Chromium + ffmpeg.")
    p.add_argument("--config", type=Path, help="request JSON (same schema as the API); flags override it")
    p.add_argument("--room", choices=["synthetic", "livekit"],
                   help="room kind (default: synthetic); livekit joins --room-name on the server named by "
                        "LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    p.add_argument("--room-name", help="room name (default: synthetic)")
    p.add_argument("--participant", action="append", metavar="SPEC", default=None,
                   help="synthetic participant: name=,color=#rrggbb,tone=Hz,speaks=S-E;S-E,"
                        "screenshare=S-E[:#rrggbb],joins=S,leaves=S,video=FILE|URL|off (repeatable)")
    p.add_argument("--web-url", help="record this page instead of a room")
    p.add_argument("--layout", help=f"one of {', '.join(builtin_layouts())} (+ -light/-dark), or a custom layout "
                                    "folder / .html.j2 file; default: default")
    add_page_flags(p)
    p.add_argument("--preset", help=f"quality preset: {', '.join(preset_names())} (default {DEFAULT_PRESET})")
    p.add_argument("--duration", type=float, help="seconds of media to record (default: until stopped)")
    p.add_argument("-o", "--output", help="output file: .mp4, .webm or .ogg (default: recordings/recording-TIME.mp4 "
                                             "unless --stream or --segments is given)")
    live = p.add_argument_group("live outputs (one encode feeds them all)")
    live.add_argument("--stream", action="append", metavar="URL",
                      help="push to rtmp://host/app/KEY, rtmps://…, srt://host:port?passphrase=… (repeatable)")
    live.add_argument("--stream-retry-window", type=float, metavar="S",
                      help="seconds a dropped destination is retried (default 60)")
    live.add_argument("--ca-file", help="PEM CAs to trust for rtmps:// (default: the system's)")
    live.add_argument("--segments", metavar="PREFIX", help="HLS: segments PREFIX_00000.ts and playlist PREFIX.m3u8")
    live.add_argument("--segment-duration", type=float, metavar="S", help="HLS segment length (default 2)")
    live.add_argument("--live-playlist", metavar="NAME", help="also a sliding playlist of the last segments")
    live.add_argument("--thumbnails", metavar="PREFIX", help="JPEG thumbnails PREFIX_00000.jpg")
    live.add_argument("--thumbnail-interval", type=float, metavar="S", help="seconds between thumbnails (default 10)")
    p.add_argument("--control", choices=["stdin"], help="take commands as JSON lines on stdin "
                                                        '({"op":"update_streams","add":[…],"remove":[…]})')
    p.add_argument("--warm", action="store_true",
                   help="start display, sink and browser (--width/--height, default 1280x720), print a WARM "
                        'status, then take the job from stdin: {"op":"job","egress_id":…,"request":{…}}')
    p.add_argument("--sync-markers", action="store_true", default=None,
                   help="flash every tile and click once a second (A/V sync check)")
    p.add_argument("--audio-only", action="store_true", default=None)
    p.add_argument("--video-only", action="store_true", default=None)
    adv = p.add_argument_group("advanced encoding (override the preset)")
    adv.add_argument("--width", type=int)
    adv.add_argument("--height", type=int)
    adv.add_argument("--fps", type=int, dest="framerate")
    adv.add_argument("--video-bitrate", type=int, help="kbps")
    adv.add_argument("--video-codec", choices=["H264", "VP8", "VP9"])
    adv.add_argument("--x264-preset")
    p.add_argument("--events", choices=["text", "json"], default="text",
                   help="json: one JSON event per line on stdout")
    p.add_argument("--egress-id", help="use this id (the service names its egresses)")
    _untrusted_flag(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug log on stderr")


def _untrusted_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--untrusted", action="store_true",
                   help="the request comes from the HTTP APIs (the service sets this): its URLs may reach public "
                        "addresses and the --allow-host hosts only, and it may name no local file")


def _upload_parser(sub) -> None:
    p = sub.add_parser("upload", help="store a finished egress's staged outputs (resumes an interrupted delivery)",
                       description="Store what a recording left in its staging folder, by its manifest; the "
                                   "service runs this for deliveries a restart interrupted.")
    p.add_argument("--config", type=Path, required=True, help="the egress's request JSON (with its upload)")
    p.add_argument("--egress-id", required=True)
    p.add_argument("--events", choices=["text", "json"], default="text",
                   help="json: one JSON event per line on stdout")
    p.add_argument("--allow-host", action="append", metavar="HOST", help="see record --allow-host")
    _untrusted_flag(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug log on stderr")


async def _upload(args: argparse.Namespace, events: EventSink) -> int:
    """Deliver a staged egress from its manifest; the same result (or error) events as `record`."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # The recording is over: a stop changes nothing; a kill leaves the rest staged for the next try.
        loop.add_signal_handler(sig, lambda: None)
    try:
        request = RecordRequest.model_validate(_read_config(args.config))
        if request.upload is None:
            raise InvalidRequest("the request has no upload (storage) to deliver to")
        found = find_manifest(Path(request.upload.staging), args.egress_id)
        if found is None:
            raise InvalidRequest(f"nothing staged for {args.egress_id} in {request.upload.staging}")
        async with (OutboundGate(outbound_policy(args)) as gate,
                    Delivery(request.upload, args.egress_id, events, gate.url) as delivery):
            delivered = await delivery.deliver(read_manifest(found))
    except ValidationError as exc:
        events.emit("error", egress_id=args.egress_id, status="FAILED", code="INVALID_ARGUMENT",
                    message=first_error(exc))
        return 2
    except CompositorError as exc:
        kept = exc.details.get("kept")
        events.emit("error", egress_id=args.egress_id, status="FAILED", **exc.to_dict(),
                    **({"file": {"path": kept}} if kept else {}))
        return exc.exit_status
    events.emit("result", egress_id=args.egress_id, status="COMPLETE", **result_of(delivered), stopped_by="resumed")
    return 0


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the egress service (HTTP API)",
                       description="Run the egress HTTP API; each egress runs as its own worker.")
    p.add_argument("--config", type=Path, help="YAML file of settings (keys as in README); env and flags override")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed at start)")
    p.add_argument("--data-dir", help="store, jobs and recordings (env COMPOSITOR_DATA_DIR; default ./compositor-data)")
    p.add_argument("--api-key", action="append", help="accepted API key (repeatable; env COMPOSITOR_API_KEYS, "
                                                       "comma-separated; default: one generated into the data dir)")
    p.add_argument("--capacity", type=float, help="CPU cores egresses may use (env COMPOSITOR_CAPACITY; default all)")
    p.add_argument("--webhook-url", action="append", help="receiver of signed webhooks (repeatable; env "
                                                          "COMPOSITOR_WEBHOOK_URLS; secret: COMPOSITOR_WEBHOOK_SECRET "
                                                          "or DATA_DIR/webhook-secret)")
    p.add_argument("--allow-host", action="append", help="a host requests may reach even if its address is private "
                                                         "(host, host:port, *.domain or *; repeatable; env "
                                                         "COMPOSITOR_ALLOWED_HOSTS)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log on stderr")


async def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .api import make_app
    from .service import Service, load_settings

    service = Service(load_settings(args.config, data_dir=args.data_dir, api_keys=args.api_key,
                                    capacity=args.capacity, webhook_urls=args.webhook_url,
                                    allowed_hosts=args.allow_host))
    service.start_background()
    resumed, settled = await service.recover()
    for rec in resumed:
        logging.getLogger(__name__).warning("resuming the delivery of %s, left unfinished by a previous run", rec.id)
    for rec in settled:
        logging.getLogger(__name__).warning("settled %s left %s by a previous run", rec.id, "running")
    # keepalive_timeout also bounds how long a new connection may take to send its first request's headers.
    runner = web.AppRunner(make_app(service), access_log=None, keepalive_timeout=service.settings.request_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = site._server.sockets[0].getsockname()[:2]
    print(f"compositor serve: listening on http://{host}:{port} (data in {service.settings.data_dir})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("compositor serve: draining", flush=True)
    await service.shutdown()
    await runner.cleanup()
    return 0


def build_request(args: argparse.Namespace) -> RecordRequest:
    """Merge --config with the flags (flags win) and validate."""
    data: dict = _read_config(args.config) if args.config else {}
    flags = {"room_name": args.room_name, "web_url": args.web_url, "layout": args.layout, "preset": args.preset,
             "duration": args.duration, "sync_markers": args.sync_markers, "audio_only": args.audio_only,
             "video_only": args.video_only}
    data.update({k: v for k, v in flags.items() if v is not None})
    fold_page_flags(args, data)
    if args.room == "livekit":
        data["room"] = {"kind": "livekit"}
    if args.participant is not None:
        data["room"] = {"participants": [parse_participant(s, i).model_dump() for i, s in enumerate(args.participant)]}
    advanced = {k: getattr(args, k) for k in ("width", "height", "framerate", "video_bitrate", "video_codec",
                                              "x264_preset") if getattr(args, k) is not None}
    if advanced:
        data["advanced"] = {**data.get("advanced", {}), **advanced}
    if args.output:
        data["file"] = {"filepath": args.output}
    _live_flags(args, data)
    if not any(data.get(k) for k in ("file", "stream", "segments", "websocket")):
        data["file"] = {"filepath": f"recordings/recording-{time.strftime('%Y-%m-%dT%H%M%S')}.mp4"}
    try:
        return RecordRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(first_error(exc)) from None


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read --config {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("--config must hold a JSON object")
    return data


def _live_flags(args: argparse.Namespace, data: dict) -> None:
    """Fold the live-output flags into the request (over what --config gave)."""
    stream = {"urls": args.stream, "retry_window": args.stream_retry_window, "ca_file": args.ca_file}
    segments = {"filename_prefix": args.segments, "segment_duration": args.segment_duration,
                "live_playlist_name": args.live_playlist}
    images = {"filename_prefix": args.thumbnails, "capture_interval": args.thumbnail_interval}
    for key, given in (("stream", stream), ("segments", segments), ("images", images)):
        given = {k: v for k, v in given.items() if v is not None}
        if given:
            data[key] = {**(data.get(key) or {}), **given}


class Control:
    """Commands as JSON lines on stdin: a warm worker's job, and changes to live destinations.

    Each command gets a `command` event back (with its `id`), so the service knows it was taken.
    """

    def __init__(self, events: EventSink):
        self.events = events
        self.recorder: Recorder | None = None
        self.job: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        async for line in reader:
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError
            except ValueError:
                self.events.emit("command", ok=False, code="INVALID_ARGUMENT",
                                 message="a command is one JSON object per line")
                continue
            try:
                self.events.emit("command", id=cmd.get("id"), ok=True, **await self._take(cmd))
            except CompositorError as exc:
                self.events.emit("command", id=cmd.get("id"), ok=False, **exc.to_dict())

    async def _take(self, cmd: dict) -> dict:
        op = cmd.get("op")
        if op == "job":
            if self.job.done():
                raise Conflict("HAS_JOB", "this worker already has its job")
            self.job.set_result(cmd)
            return {}
        if op not in ("update_streams", "update_layout"):
            raise InvalidRequest("unknown command; known: job, update_streams, update_layout")
        if self.recorder is None:
            raise Conflict("EGRESS_NOT_ACTIVE", "no recording is running yet")
        if op == "update_layout":
            return await self.recorder.update_layout(str(cmd.get("layout") or ""))
        return {"streams": await self.recorder.update_streams(list(cmd.get("add") or []),
                                                              list(cmd.get("remove") or []))}


async def _warm(args: argparse.Namespace, events: EventSink, stop: asyncio.Event, control: Control,
                job: dict, gate: OutboundGate) -> Outputs:
    """A warm worker: display, sink and browser up first; then the job that comes on stdin, on them."""
    width, height = args.width or WARM_SIZE[0], args.height or WARM_SIZE[1]
    sweep_stale_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{WARM}-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            stage = await open_stage(stack, workdir, width, height, DEFAULT_SAMPLE_RATE, gate)
            events.emit("status", status="WARM", width=width, height=height)
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([control.job, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not control.job.done():
                raise Aborted("stopped while warm, before any job")
            cmd = control.job.result()
            try:
                request = RecordRequest.model_validate(cmd.get("request") or {})
            except ValidationError as exc:
                raise InvalidRequest(first_error(exc)) from None
            config = job["config"] = resolve(request, egress_id=cmd.get("egress_id"), policy=gate.policy)
            if config.frame != (width, height, DEFAULT_SAMPLE_RATE):
                raise InvalidRequest(f"this warm worker renders {width}x{height} at {DEFAULT_SAMPLE_RATE} Hz; the job "
                                     "needs {}x{} at {} Hz".format(*config.frame))
            recorder = job["recorder"] = control.recorder = Recorder(config, events, stop, gate)
            return await recorder.run(stage)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _record(args: argparse.Namespace, events: EventSink) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        recorder = job["recorder"]
        if recorder is not None and recorder.storing:
            # Interrupting a delivery gains nothing: a kill leaves the outputs staged for a resumed one.
            logging.getLogger(__name__).warning("storing the outputs; a signal does not stop that")
            return
        if signals_seen == 1:
            stop.set()  # finish the file cleanly
        else:
            task.cancel()  # asked twice: stop now; owners still clean up

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    job: dict = {"config": None, "recorder": None}
    control = Control(events) if args.control == "stdin" or args.warm else None
    commands = asyncio.create_task(control.run()) if control else None
    try:
        # Every connection the request leads to goes through the gate, under the policy of --untrusted.
        async with OutboundGate(outbound_policy(args)) as gate:
            if args.warm:
                outputs = await _warm(args, events, stop, control, job, gate)
            else:
                job["config"] = resolve(build_request(args), egress_id=args.egress_id, policy=gate.policy)
                job["recorder"] = Recorder(job["config"], events, stop, gate)
                if control:
                    control.recorder = job["recorder"]
                outputs = await job["recorder"].run()
    except CompositorError as exc:
        config = job["config"]
        events.emit("error", egress_id=config.egress_id if config else None, status=_status_of(exc), **exc.to_dict(),
                    **({"file": {"path": exc.details["file"]}} if "file" in exc.details else {}))
        return exc.exit_status
    finally:
        if commands:
            commands.cancel()
    config, recorder = job["config"], job["recorder"]
    result = outputs.to_dict()
    if "file" in result:
        result["file"].update(started_at=recorder.timings.get("first_frame"),
                              ended_at=recorder.timings.get("stop_requested"))
    events.emit("result", egress_id=config.egress_id, status="COMPLETE", **result,
                timings=recorder.timings, stopped_by=recorder.stopped_by)
    return 0


def _status_of(exc: CompositorError) -> str:
    return "ABORTED" if exc.code == "ABORTED" else "FAILED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compositor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _record_parser(sub)
    _upload_parser(sub)
    _serve_parser(sub)
    layouts_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "verbose", False):
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if args.command == "record":
        events = EventSink(args.events)
        try:
            return asyncio.run(_record(args, events))
        except asyncio.CancelledError:
            events.emit("error", status="FAILED", code="INTERRUPTED", message="stopped by a second signal")
            return 130
    if args.command == "upload":
        return asyncio.run(_upload(args, EventSink(args.events)))
    if args.command == "layouts":
        return run_layouts(args)
    if args.command == "serve":
        try:
            return asyncio.run(_serve(args))
        except CompositorError as exc:
            print(f"compositor serve: {exc.message}", file=sys.stderr)
            return exc.exit_status
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
