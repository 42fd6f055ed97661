"""A worker's outputs into storage: HLS segments and thumbnails while recording, then the file, and
the manifest last.

Outputs are written under the job's staging folder, and a file's place there is its storage key in the
storage of its kind (the file, the HLS segments and the thumbnails may each have their own). Nothing
staged is removed before every output, the manifest included, is confirmed stored: what a crash leaves
in staging, with its manifest, is exactly what a resumed delivery still has to store. Once a storage
refuses for good and the backup takes over, everything goes to the backup (what the storages already
held is stored again), so a failed recording is never split between places.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..events import EventSink
from ..paths import WORKDIR_PREFIX
from ..protocol import UploadEvent, UploadStatus
from ..request import OutputKind, UploadSpec
from ..storage.errors import UploadFailed
from ..storage.local import LocalSite
from ..storage.manifest import MANIFEST_VERSION, iso_time, keys_by_kind, manifest_key, manifest_keys, sidecar_kind
from ..storage.uploader import RetryNotice, RetryPolicy, StoredFile, Uploader
from .hls import Playlist, extinf, write_atomic

log = logging.getLogger(__name__)

#: How often new segments and thumbnails are looked for while recording.
LIVE_UPLOAD_S = 2.0
#: The kinds of output, each to its storage (the manifest goes with the first that has outputs).
KINDS: tuple[OutputKind, ...] = ("file", "segments", "images")


def build_manifest(*, egress_id: str, room_name: str, staging: Path, file: dict | None,
                   playlist: Path | None, live_playlist: Path | None, images: list[Path],
                   sidecars: Sequence[Path] = ()) -> dict:
    """What an egress wrote, by storage key: the file with its facts, playlists with their segments,
    thumbnails, the file's sidecars (`name.ext.<kind>.json`). Locations are filled in once stored."""
    def key(path: Path | str) -> str:
        return Path(path).relative_to(staging).as_posix()

    manifest: dict = {"version": MANIFEST_VERSION, "egress_id": egress_id, "room_name": room_name,
                      "files": [], "playlists": [], "images": [], "sidecars": []}
    if file:
        facts = {k: v for k, v in file.items() if k not in ("path", "started_at", "ended_at")}
        manifest["files"].append({"key": key(file["path"]), **facts, "started_at": iso_time(file.get("started_at")),
                                  "ended_at": iso_time(file.get("ended_at"))})
    if playlist is not None and playlist.exists():
        listed = Playlist.read(playlist)
        segments = []
        for entry in listed.segments:
            path = playlist.parent / entry[-1]
            segments.append({"key": key(path), "duration": round(extinf(entry), 3),
                             "size": path.stat().st_size if path.exists() else 0})
        manifest["playlists"].append({"key": key(playlist), "live_key": key(live_playlist) if live_playlist else None,
                                      "duration": round(listed.duration, 3), "segments": segments})
    manifest["images"] = [{"key": key(p), "size": p.stat().st_size} for p in images]
    manifest["sidecars"] = [{"key": key(p), "kind": sidecar_kind(p), "size": p.stat().st_size} for p in sidecars]
    manifest["key"] = manifest_key(egress_id, [e["key"] for group in ("files", "playlists", "images")
                                               for e in manifest[group]])
    return manifest


class Delivery:
    """Stores one egress's staged outputs. Use `async with`; `follow()` while recording, `deliver()` at the end."""

    def __init__(self, spec: UploadSpec, egress_id: str, events: EventSink, proxy: str | None = None):
        """Cloud storages are reached through `proxy` (the worker's outbound gate) when given."""
        self.spec = spec
        self.egress_id = egress_id
        self.events = events
        self.staging = Path(spec.staging)
        local = LocalSite(Path(spec.local_root)) if spec.local_root else None
        retry = RetryPolicy(window_s=spec.retry_window_s)
        self.in_place = spec.in_place
        made: list[tuple[object, Uploader]] = []

        def uploader(config) -> Uploader:
            # One uploader (and its connections) per distinct storage, whichever outputs share it.
            for other, existing in made:
                if other == config:
                    return existing
            made.append((config, Uploader(config, local=local, retry=retry, on_retry=self._retrying, proxy=proxy)))
            return made[-1][1]

        #: where each kind of output goes (its own storage, or the egress's)
        self._primary = {kind: uploader(spec.storage_of(kind)) for kind in KINDS}
        self._uploaders = [u for _, u in made]
        self._backup = (Uploader(spec.backup, local=local, retry=retry, on_retry=self._retrying, proxy=proxy)
                        if spec.backup else None)
        self.on_backup = False
        self.stored: dict[str, StoredFile] = {}
        self._stamps: dict[str, tuple[int, int]] = {}
        self._lock = asyncio.Lock()
        self._live: asyncio.Task | None = None
        # Named like a worker's temp dir, so the next worker sweeps it up if this process is killed.
        self._snapshots = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{egress_id}-snap-"))

    async def __aenter__(self) -> Delivery:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop live uploads and release connections (staged files stay)."""
        await self.stop_following()
        for uploader in self._uploaders:
            await uploader.close()
        if self._backup:
            await self._backup.close()
        shutil.rmtree(self._snapshots, ignore_errors=True)

    # -- while recording ---------------------------------------------------------------------------------

    def follow(self, playlists: list[Path], images: Callable[[], list[Path]] | None) -> None:
        """Store complete segments (then their playlists) and finished thumbnails (`images()`, oldest first)
        as they appear, again when one changes. A failure here is logged and left to the final delivery, which
        tries again and reports.
        """
        if self.in_place or (not playlists and images is None):
            return
        self._live = asyncio.create_task(self._follow(playlists, images))

    async def stop_following(self) -> None:
        if self._live:
            self._live.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._live
            self._live = None

    async def _follow(self, playlists: list[Path], images: Callable[[], list[Path]] | None) -> None:
        while True:
            await asyncio.sleep(LIVE_UPLOAD_S)
            try:
                for playlist in playlists:
                    await self._ship_playlist(playlist)
                if images:
                    await self.ship([(p, self._key(p)) for p in images()], "images")
            except UploadFailed as exc:
                log.warning("storing while recording failed (%s); the final delivery tries again", exc.message)

    async def _ship_playlist(self, playlist: Path) -> None:
        """The segments a playlist names, then that very playlist (a snapshot: ffmpeg replaces it)."""
        if not playlist.exists():
            return
        snapshot = self._snapshots / playlist.name
        shutil.copyfile(playlist, snapshot)
        listed = Playlist.read(snapshot)
        segments = [playlist.parent / entry[-1] for entry in listed.segments]
        if not segments:
            return
        await self.ship([(p, self._key(p)) for p in segments], "segments")
        await self.ship([(snapshot, self._key(playlist))], "segments")

    # -- at the end --------------------------------------------------------------------------------------

    async def deliver(self, manifest: dict) -> dict:
        """Store every output of `manifest`, then the manifest with their locations; remove what was staged.

        Returns the manifest as stored. Raises UploadFailed (details: `kept`, the staging folder) when
        neither storage took everything; the staged files are all kept then.
        """
        await self.stop_following()
        keys = manifest_keys(manifest)
        manifest_path = self.staging / manifest["key"]
        if self.in_place:
            located = self._locate(manifest, lambda key: str(self.staging / key), "local", False)
            _write_json(manifest_path, located)
            return {**located, "location": str(manifest_path)}
        # Written before anything is stored: a restarted service resumes from it.
        _write_json(manifest_path, manifest)
        by_kind = keys_by_kind(manifest)
        # The manifest goes with the first output it lists (the file's storage, if there is a file).
        first = next((kind for kind in KINDS if by_kind[kind]), "file")
        try:
            for kind in KINDS:
                await self.ship([(self.staging / k, k) for k in by_kind[kind]], kind)
            backend, on_backup = self._where(first)
            located = self._locate(manifest, lambda key: self.stored[key].location, backend, on_backup)
            final = self._snapshots / "manifest.json"
            _write_json(final, located)
            await self.ship([(final, manifest["key"])], first)
        except UploadFailed as exc:
            exc.details["kept"] = str(self.staging)
            raise
        _write_json(manifest_path, located)
        self._remove_staged([*keys, manifest["key"]])
        return {**located, "location": self.stored[manifest["key"]].location}

    async def ship(self, files: list[tuple[Path, str]], kind: OutputKind) -> None:
        """Store `(path, key)` pairs (outputs of `kind`) not yet stored as they are now (playlists change, so
        do thumbnails)."""
        async with self._lock:
            todo = [(p, k) for p, k in files if self._stamps.get(k) != _stamp(p)]
            if not todo:
                return
            if not self.on_backup:
                try:
                    await self._store(self._primary[kind], todo, False)
                    return
                except UploadFailed as exc:
                    if self._backup is None:
                        raise
                    self.on_backup = True
                    self.events.emit(UploadEvent(egress_id=self.egress_id, status=UploadStatus.BACKUP, code=exc.code,
                                                 message=exc.message))
                    log.warning("storage refused for good (%s: %s); storing everything on the backup",
                                exc.code, exc.message)
                    # What the storage already holds goes too: one recording, one place.
                    earlier = [(self.staging / k, k) for k in self.stored if (self.staging / k).exists()]
                    todo = _unique(earlier + todo)
            await self._store(self._backup, todo, True)

    async def _store(self, uploader: Uploader, files: list[tuple[Path, str]], on_backup: bool) -> None:
        stamps = {k: _stamp(p) for p, k in files}
        results = await uploader.store_files(files)
        for (path, key), stored in zip(files, results):
            self.stored[key] = replace(stored, backup_used=on_backup)
            self._stamps[key] = stamps[key]
            self.events.emit(UploadEvent(egress_id=self.egress_id, status=UploadStatus.STORED, key=key,
                                         size=stored.size, storage=stored.backend, backup_used=on_backup))

    def _where(self, kind: OutputKind) -> tuple[str, bool]:
        uploader = self._backup if self.on_backup and self._backup else self._primary[kind]
        return uploader.primary.name, self.on_backup

    def _retrying(self, notice: RetryNotice) -> None:
        self.events.emit(UploadEvent(egress_id=self.egress_id, status=UploadStatus.RETRYING, key=notice.key,
                                     attempt=notice.attempt, delay_s=round(notice.delay_s, 1), code=notice.error.code,
                                     message=notice.error.message))

    def _key(self, path: Path) -> str:
        return path.relative_to(self.staging).as_posix()

    @staticmethod
    def _locate(manifest: dict, location, backend: str, on_backup: bool) -> dict:
        """The manifest with every entry's location, and where it all went."""
        out = json.loads(json.dumps(manifest))
        out.update(storage=backend, backup_used=on_backup)
        for entry in [*out["files"], *out["images"], *out.get("sidecars", [])]:
            entry["location"] = location(entry["key"])
        for pl in out["playlists"]:
            pl["location"] = location(pl["key"])
            if pl.get("live_key"):
                pl["live_location"] = location(pl["live_key"])
            for seg in pl["segments"]:
                seg["location"] = location(seg["key"])
        return out

    def _remove_staged(self, keys: list[str]) -> None:
        """Every output is stored: the staged copies go, and the staging folder if nothing else is left."""
        for key in keys:
            (self.staging / key).unlink(missing_ok=True)
        for folder in sorted({(self.staging / k).parent for k in keys}, key=lambda p: len(p.parts), reverse=True):
            while folder != self.staging and self.staging in folder.parents:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
                folder = folder.parent
        with contextlib.suppress(OSError):
            self.staging.rmdir()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _unique(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    seen: dict[str, Path] = {}
    for path, key in files:
        seen[key] = path
    return [(p, k) for k, p in seen.items()]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2) + "\n")
