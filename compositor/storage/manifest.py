"""The manifest of an egress's stored outputs, `{egress_id}.json`: every file, playlist (with its segments),
thumbnail and sidecar of the file, by storage key and, once stored, location. A delivery writes it into staging
before anything is stored, so a delivery cut short can be resumed from it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from .errors import FAILED, UploadFailed

MANIFEST_VERSION = 1


def manifest_key(egress_id: str, output_keys: list[str]) -> str:
    """`{egress_id}.json` in the folder of the first output."""
    folder = output_keys[0].rpartition("/")[0] if output_keys else ""
    return f"{folder}/{egress_id}.json" if folder else f"{egress_id}.json"


def iso_time(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") if ts else None


def keys_by_kind(manifest: dict) -> dict[str, list[str]]:
    """The output keys of a manifest (not the manifest's own) by output kind: file, segments (with their
    playlists), images."""
    segments = []
    for pl in manifest["playlists"]:
        segments += [s["key"] for s in pl["segments"]] + [pl["key"]] + ([pl["live_key"]] if pl.get("live_key") else [])
    # A file's sidecars go with it, to its storage (a manifest of before sidecars has none).
    files = [f["key"] for f in manifest["files"]] + [s["key"] for s in manifest.get("sidecars", [])]
    return {"file": files, "segments": segments,
            "images": [i["key"] for i in manifest["images"]]}


def sidecar_kind(path: Path | str) -> str:
    """A sidecar's kind (participants, speakers) from its name, `name.ext.<kind>.json`."""
    return Path(path).name.removesuffix(".json").rpartition(".")[2]


def manifest_keys(manifest: dict) -> list[str]:
    """Every output key of a manifest (not the manifest's own)."""
    return [key for keys in keys_by_kind(manifest).values() for key in keys]


def find_manifest(staging: Path, egress_id: str) -> Path | None:
    """The manifest a delivery left in staging (written before anything was stored), if any."""
    return next(iter(sorted(staging.rglob(f"{egress_id}.json"))), None) if staging.is_dir() else None


def result_of(manifest: dict) -> dict:
    """The worker's result fields (file, segments, images, manifest) from a delivered manifest."""
    out: dict = {"manifest": manifest.get("location"), "storage": manifest.get("storage"),
                 "backup_used": manifest.get("backup_used", False)}
    if manifest["files"]:
        f = manifest["files"][0]
        out["file"] = {**{k: v for k, v in f.items() if k not in ("started_at", "ended_at")},
                       "path": f["location"], "storage": out["storage"], "backup_used": out["backup_used"],
                       "started_at": _epoch(f.get("started_at")), "ended_at": _epoch(f.get("ended_at"))}
        if manifest.get("sidecars"):
            out["file"]["sidecars"] = {s["kind"]: s["location"] for s in manifest["sidecars"]}
    if manifest["playlists"]:
        pl = manifest["playlists"][0]
        out["segments"] = {"playlist": pl["location"], "live_playlist": pl.get("live_location"),
                           "segment_count": len(pl["segments"]), "duration": pl["duration"],
                           "size": sum(s["size"] for s in pl["segments"])}
    if manifest["images"]:
        images = manifest["images"]
        out["images"] = {"directory": images[0]["location"].rpartition("/")[0], "count": len(images),
                         "first": images[0]["location"], "last": images[-1]["location"]}
    return out


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def read_manifest(path: Path) -> dict:
    """A staged manifest; UploadFailed if it cannot be read (nothing to resume from)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UploadFailed(f"cannot read the staged manifest {path}: {exc}", FAILED) from None
