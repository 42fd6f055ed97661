"""`compositor` command line: its arguments, parsed, and handed to the process each command runs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ..errors import CompositorError, InvalidRequest
from ..events import EventSink
from ..layouts import builtin_layouts
from ..plan import WARM_SIZE
from ..presets import DEFAULT_PRESET, preset_names
from ..protocol import ErrorEvent
from ..request import RecordRequest, first_error, parse_participant, read_request_file
from .args import add_page_flags, fold_page_flags, outbound_policy
from .layouts import layouts_parser, run_layouts

if TYPE_CHECKING:
    from .. import worker


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
                        "screenshare=S-E[:#rrggbb],joins=S,leaves=S,video=FILE|URL|off,freezes=S-E;S-E,"
                        "mutes=S-E;S-E,kind=standard|agent|sip|… "
                        "(repeatable)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--include", action="append", metavar="IDENTITY",
                     help="record only this participant (repeatable); the others are neither seen nor heard")
    who.add_argument("--exclude", action="append", metavar="IDENTITY",
                     help="leave this participant out: neither seen nor heard (repeatable)")
    p.add_argument("--slate-url", metavar="URL",
                   help="the image live destinations show while paused (the pause command on --control stdin); "
                        "default: a plain \"We'll be right back\" card")
    p.add_argument("--web-url", help="record this page instead of a room")
    p.add_argument("--await-start-signal", action="store_true", default=None,
                   help="with --web-url: record from the page's console.log('START_RECORDING') on")
    p.add_argument("--layout", help=f"one of {', '.join(builtin_layouts())} (+ -light/-dark), or a custom layout "
                                    "folder / .html.j2 file; default: default")
    add_page_flags(p)
    p.add_argument("--preset", help=f"quality preset: {', '.join(preset_names())} (default {DEFAULT_PRESET})")
    p.add_argument("--duration", type=float, help="seconds of media to record (default: until stopped)")
    idle = p.add_argument_group("idle stop (end COMPLETE by itself, stopped_by idle; each off unless given)")
    idle.add_argument("--idle-empty", type=float, metavar="S", help="when no one but the recorder is in the room "
                                                                     "for S s")
    idle.add_argument("--idle-no-publisher", type=float, metavar="S", help="when no one publishes for S s")
    idle.add_argument("--idle-all-muted", type=float, metavar="S", help="when every published track is muted for S s")
    p.add_argument("--no-sidecars", dest="sidecars", action="store_false", default=None,
                   help="write no participants and speakers sidecars (FILE.participants.json, FILE.speakers.json) "
                        "next to the file")
    p.add_argument("-o", "--output", help="output file: .mp4, .webm, .ogg or .mp3 (MP3 with --audio-only; "
                                             "default: recordings/recording-TIME.mp4 unless --stream or --segments "
                                             "is given)")
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
    p.add_argument("--landing-ms", type=float, metavar="MS",
                   help="where the page's frames landed in the display's 60 Hz tick in the last job of this frame "
                        "(its result's landing_ms): the grabs are aimed by it when the page starts too fast to "
                        "measure (the service passes it)")
    p.add_argument("--sync-markers", action="store_true", default=None,
                   help="flash every tile and click once a second (A/V sync check)")
    p.add_argument("--audio-only", action="store_true", default=None)
    p.add_argument("--video-only", action="store_true", default=None)
    adv = p.add_argument_group("advanced encoding (override the preset)")
    adv.add_argument("--width", type=int)
    adv.add_argument("--height", type=int)
    adv.add_argument("--fps", type=int, dest="framerate")
    adv.add_argument("--video-bitrate", type=int, help="kbps")
    adv.add_argument("--video-codec", choices=["H264", "H264_BASELINE", "H264_MAIN", "H264_HIGH", "VP8", "VP9"])
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


def _ingress_parser(sub) -> None:
    p = sub.add_parser("ingress", help="bring one stream (RTMP, WHIP, a URL) into a LiveKit room",
                       description="Run one ingress: read its input, publish it into its room as a participant. "
                                   "The service runs one per live ingress.")
    job = p.add_mutually_exclusive_group(required=True)
    job.add_argument("--config", type=Path, help="the ingress job JSON (it holds the room token)")
    job.add_argument("--warm", action="store_true", help="load everything, say READY, then take the job as one "
                                                         "JSON line on stdin (how the service keeps one ready)")
    p.add_argument("--events", choices=["text", "json"], default="text",
                   help="json: one JSON event per line on stdout")
    p.add_argument("--allow-host", action="append", metavar="HOST", help="see record --allow-host")
    _untrusted_flag(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug log on stderr")


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
    p.add_argument("--memory-mb", type=float, help="memory (MB) jobs may hold (env COMPOSITOR_MEMORY_MB; default "
                   "the machine's or container's limit less 300)")
    p.add_argument("--webhook-url", action="append", help="receiver of signed webhooks (repeatable; env "
                                                          "COMPOSITOR_WEBHOOK_URLS; secret: COMPOSITOR_WEBHOOK_SECRET "
                                                          "or DATA_DIR/webhook-secret)")
    p.add_argument("--allow-host", action="append", help="a host requests may reach even if its address is private "
                                                         "(host, host:port, *.domain or *; repeatable; env "
                                                         "COMPOSITOR_ALLOWED_HOSTS)")
    cluster = p.add_argument_group("cluster", "join a cluster of nodes sharing one Redis (all three, or none)")
    cluster.add_argument("--redis-url", help="the cluster's Redis, with its password (env COMPOSITOR_REDIS_URL)")
    cluster.add_argument("--node-id", help="this node's name in the cluster (env COMPOSITOR_NODE_ID; default: the "
                                           "host name)")
    cluster.add_argument("--advertise-url", help="where the other nodes reach this node's API (env "
                                                 "COMPOSITOR_ADVERTISE_URL)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log on stderr")


def build_request(args: argparse.Namespace) -> RecordRequest:
    """Merge --config with the flags (flags win) and validate."""
    data: dict = read_request_file(args.config, "--config") if args.config else {}
    flags = {"room_name": args.room_name, "web_url": args.web_url, "layout": args.layout, "preset": args.preset,
             "duration": args.duration, "sync_markers": args.sync_markers, "audio_only": args.audio_only,
             "video_only": args.video_only, "await_start_signal": args.await_start_signal,
             "sidecars": args.sidecars}
    data.update({k: v for k, v in flags.items() if v is not None})
    fold_page_flags(args, data)
    if args.room == "livekit":
        data["room"] = {"kind": "livekit"}
    if args.participant is not None:
        data["room"] = {"participants": [parse_participant(s, i).model_dump() for i, s in enumerate(args.participant)]}
    if args.slate_url is not None:
        data["pause"] = {"slate_url": args.slate_url}
    if args.include is not None:
        data["participants"] = {"include": args.include}
    elif args.exclude is not None:
        data["participants"] = {"exclude": args.exclude}
    advanced = {k: getattr(args, k) for k in ("width", "height", "framerate", "video_bitrate", "video_codec",
                                              "x264_preset") if getattr(args, k) is not None}
    if advanced:
        data["advanced"] = {**data.get("advanced", {}), **advanced}
    if args.output:
        data["file"] = {"filepath": args.output}
    _live_flags(args, data)
    idle = {"empty_seconds": args.idle_empty, "no_publisher_seconds": args.idle_no_publisher,
            "all_muted_seconds": args.idle_all_muted}
    if any(v is not None for v in idle.values()):
        given = data.pop("idleStop", None) or data.get("idle_stop") or {}  # --config may spell it either way
        data["idle_stop"] = {**given, **{k: v for k, v in idle.items() if v is not None}}
    if not any(data.get(k) for k in ("file", "stream", "segments", "websocket")):
        data["file"] = {"filepath": f"recordings/recording-{time.strftime('%Y-%m-%dT%H%M%S')}.mp4"}
    try:
        return RecordRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(first_error(exc)) from None


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


def _worker_options(args: argparse.Namespace, events: EventSink) -> worker.WorkerOptions:
    from .. import worker

    return worker.WorkerOptions(events=events, policy=outbound_policy(args), egress_id=args.egress_id,
                                landing_ms=getattr(args, "landing_ms", None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compositor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _record_parser(sub)
    _upload_parser(sub)
    _serve_parser(sub)
    _ingress_parser(sub)
    layouts_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "verbose", False):
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    # Each command imports what only it needs: an ingress worker starts without the recorder or the service.
    if args.command in ("record", "upload"):
        from .. import worker
    if args.command == "record":
        events = EventSink(args.events)
        options = _worker_options(args, events)
        warm = (args.width or WARM_SIZE[0], args.height or WARM_SIZE[1]) if args.warm else None
        try:
            return asyncio.run(worker.record(dataclasses.replace(options, control=args.control == "stdin",
                                                                 warm=warm), lambda: build_request(args)))
        except asyncio.CancelledError:
            events.emit(ErrorEvent(code="INTERRUPTED", message="stopped by a second signal"))
            return 130
    if args.command == "upload":
        return asyncio.run(worker.deliver(_worker_options(args, EventSink(args.events)), args.config))
    if args.command == "ingress":
        from ..ingress.main import ingress  # loads PyAV and the WebRTC SDK, which only this command needs

        return asyncio.run(ingress(args.config, args.events, outbound_policy(args)))
    if args.command == "layouts":
        return run_layouts(args)
    if args.command == "serve":
        from ..api.server import serve
        from ..service import load_settings

        try:
            settings = load_settings(args.config, data_dir=args.data_dir, api_keys=args.api_key,
                                     capacity=args.capacity, memory_mb=args.memory_mb,
                                     webhook_urls=args.webhook_url,
                                     allowed_hosts=args.allow_host,
                                     cluster={k: v for k, v in (("redis_url", args.redis_url),
                                                                ("node_id", args.node_id),
                                                                ("advertise_url", args.advertise_url)) if v})
            return asyncio.run(serve(settings, args.host, args.port))
        except CompositorError as exc:
            print(f"compositor serve: {exc.message}", file=sys.stderr)
            return exc.exit_status
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
