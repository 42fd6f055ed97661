"""Recordings into storage through the service and real workers: S3 (moto), GCS (fake-gcs-server) and
Azure (azurite) on 127.0.0.1; HLS and thumbnails stored while recording, manifests, download URLs,
outages, refusals, the backup, and deliveries resumed after a restart."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from compositor import analysis

from .support.storage_servers import AZURITE_KEY, BUCKET, _s3_client, azure_config, azure_read, gcs_config, s3_config
from .test_service import Server

TINY = {"advanced": {"width": 320, "height": 180}}
BLUE = {"room": {"participants": [{"name": "A", "color": "#4363d8", "tone": 450}]}}


def serve(tmp_path: Path, name: str = "data", **settings) -> Server:
    """The service with these settings (storage configs as YAML, the way an operator writes them)."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    return Server(tmp_path / name, "--config", str(config))


def storage_of(config) -> dict:
    """A storage config as a request (or the YAML) carries it, secrets included."""
    return config.with_secrets()


def record(server: Server, seconds: float = 2.0, **body) -> dict:
    info = server.start(**TINY, **BLUE, **body)
    server.wait_status(info["id"], "ACTIVE")
    time.sleep(seconds)
    server.call("POST", f"/v1/egress/{info['id']}/stop")
    return info


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def check_media(data: bytes, tmp_path: Path, name: str = "got.mp4") -> Path:
    """The bytes are a playable recording of the blue participant with its 450 Hz tone."""
    path = tmp_path / name
    path.write_bytes(data)
    frame = analysis.frame_at(path, 1.0)
    assert analysis.color_distance(analysis.region_color(frame, 0.3, 0.3, 0.4, 0.4), "#4363d8") <= 40
    assert analysis.tone_level(analysis.audio_samples(path), 450, 0.5, 1.5) > 0.05
    return path


def test_s3_file_hls_and_thumbnails_stored_while_recording_with_a_manifest(s3_server, tmp_path):
    server = serve(tmp_path, storage=storage_of(s3_config(s3_server)))
    s3 = _s3_client(s3_server)
    try:
        info = server.start(**TINY, **BLUE, mode="record", file={"filepath": "{room_name}/{egress_id}"},
                            segments={"filenamePrefix": "{room_name}/hls/seg", "segmentDuration": 1,
                                      "livePlaylistName": "live"},
                            images={"filenamePrefix": "{room_name}/img/thumb", "captureInterval": 1})
        egress_id = info["id"]
        server.wait_status(egress_id, "ACTIVE")
        # While it records, segments reach the bucket, and a stored playlist never names a segment not stored.
        seen_playlist = 0
        deadline = time.monotonic() + 15
        thumbs = False
        while time.monotonic() < deadline and not (seen_playlist >= 2 and thumbs):
            keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="room-1/").get("Contents", [])}
            if "room-1/hls/seg.m3u8" in keys:
                text = s3.get_object(Bucket=BUCKET, Key="room-1/hls/seg.m3u8")["Body"].read().decode()
                named = [ln for ln in text.splitlines() if ln.endswith(".ts")]
                assert named and all(f"room-1/hls/{n}" in keys | _keys(s3) for n in named), (named, keys)
                seen_playlist += 1
            thumbs = any(k.startswith("room-1/img/thumb_") for k in keys)
            time.sleep(0.5)
        assert seen_playlist >= 2 and thumbs
        assert server.call("GET", f"/v1/egress/{egress_id}")[1]["status"] == "ACTIVE"
        server.call("POST", f"/v1/egress/{egress_id}/stop")
        done = server.wait_status(egress_id, "COMPLETE")

        f = done["file"]
        key = f"room-1/{egress_id}.mp4"
        assert (f["key"], f["storage"], f["backupUsed"]) == (key, "s3", False)
        assert f["location"] == f"{s3_server.endpoint}/{BUCKET}/{key}"
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert len(data) == f["size"]
        facts = analysis.facts(check_media(data, tmp_path))
        assert (facts.width, facts.height, facts.video_codec, facts.audio_codec) == (320, 180, "h264", "aac")

        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"room-1/{egress_id}.json")["Body"].read())
        assert done["manifest"] == f"{s3_server.endpoint}/{BUCKET}/room-1/{egress_id}.json"
        assert (manifest["egress_id"], manifest["storage"], manifest["backup_used"]) == (egress_id, "s3", False)
        assert manifest["files"][0]["key"] == key and manifest["files"][0]["size"] == len(data)
        assert abs(manifest["files"][0]["duration"] - f["duration"]) < 0.01
        playlist = manifest["playlists"][0]
        assert (playlist["key"], playlist["live_key"]) == ("room-1/hls/seg.m3u8", "room-1/hls/live.m3u8")
        final = s3.get_object(Bucket=BUCKET, Key="room-1/hls/seg.m3u8")["Body"].read().decode()
        assert final.rstrip().endswith("#EXT-X-ENDLIST")
        assert [ln for ln in final.splitlines() if ln.endswith(".ts")] == \
            [s["key"].rpartition("/")[2] for s in playlist["segments"]]
        assert len(playlist["segments"]) == done["segments"]["segmentCount"] >= 3
        for seg in playlist["segments"]:  # byte for byte: sizes as staged
            assert s3.head_object(Bucket=BUCKET, Key=seg["key"])["ContentLength"] == seg["size"] > 0
        assert len(manifest["images"]) == done["images"]["count"] >= 2
        # The file's sidecars went with it, to its storage, named after it, and the result says where.
        kinds = ("participants", "speakers")
        assert [(c["kind"], c["key"]) for c in manifest["sidecars"]] == [(k, f"{key}.{k}.json") for k in kinds]
        assert f["sidecars"] == {k: f"{s3_server.endpoint}/{BUCKET}/{key}.{k}.json" for k in kinds}
        people = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{key}.participants.json")["Body"].read())
        assert [(p["identity"], p["from_start"], p["until_end"]) for p in people["participants"]] == [("A", True, True)]
        for image in manifest["images"]:
            assert s3.get_object(Bucket=BUCKET, Key=image["key"])["Body"].read()[:2] == b"\xff\xd8"  # JPEG
        # Everything stored: nothing left staged, nothing in the recordings folder.
        assert not (server.data_dir / "uploads" / egress_id).exists()

        _, link, _ = server.call("GET", f"/v1/recordings/rec_{egress_id[3:]}/download-url?expiresIn=120")
        assert link["downloadUrl"].startswith(f"{s3_server.endpoint}/{BUCKET}/{key}?") and link["expiresAt"]
        assert fetch(link["downloadUrl"]) == data
    finally:
        server.stop_server()


def test_each_output_to_its_own_storage(s3_server, tmp_path):
    """LiveKit's requests may name a storage per output: the file to S3, the thumbnails to the server's own
    (local) storage, each where it was asked, the manifest with the file."""
    server = serve(tmp_path)
    s3 = _s3_client(s3_server)
    try:
        # LiveKit's shape: the file output names S3, the image output nothing (the server's local storage).
        info = record(server, file_outputs=[{"file_type": "MP4", "filepath": "own/rec.mp4",
                                             "s3": storage_of(s3_config(s3_server))}],
                      image_outputs=[{"capture_interval": 1, "filename_prefix": "own/img/t"}])
        done = server.wait_status(info["id"], "COMPLETE", timeout=60)
        assert (done["file"]["storage"], done["file"]["key"]) == ("s3", "own/rec.mp4"), done["file"]
        check_media(s3.get_object(Bucket=BUCKET, Key="own/rec.mp4")["Body"].read(), tmp_path)
        assert s3.head_object(Bucket=BUCKET, Key=f"own/{info['id']}.json")  # the manifest went with the file
        local = server.data_dir / "recordings" / "own" / "img"
        assert done["images"]["count"] >= 2 and len(list(local.glob("t_*.jpg"))) == done["images"]["count"]
        assert not s3.list_objects_v2(Bucket=BUCKET, Prefix="own/img/").get("Contents")
        # The download link is S3's own (the file's storage signs it).
        link = server.call("GET", f"/v1/recordings/rec_{info['id'][3:]}/download-url")[1]["downloadUrl"]
        assert link.startswith(s3_config(s3_server).endpoint) and len(fetch(link)) == done["file"]["size"]
    finally:
        server.stop_server()


def test_an_overwritten_thumbnail_is_stored_again_at_each_capture(s3_server, tmp_path):
    server = serve(tmp_path, storage=storage_of(s3_config(s3_server)))
    s3 = _s3_client(s3_server)
    key = "room-1/now.jpeg"
    # Blue, then green: the one stored thumbnail must follow the picture.
    people = {"room": {"participants": [{"name": "A", "color": "#4363d8", "tone": 450, "leaves": 3},
                                        {"name": "B", "color": "#3cb44b", "tone": 650, "joins": 2}]}}
    try:
        info = server.start(**TINY, **people, file={"filepath": "{room_name}/{egress_id}"},
                            images={"filenamePrefix": "{room_name}/now", "captureInterval": 1,
                                    "filenameSuffix": "NONE_OVERWRITE"})
        server.wait_status(info["id"], "ACTIVE")
        stored: list[bytes] = []  # each version of the object seen while it records
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(stored) < 2:
            if key in _keys(s3):
                data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                if not stored or data != stored[-1]:
                    stored.append(data)
            time.sleep(0.3)
        assert len(stored) >= 2 and all(d[:2] == b"\xff\xd8" for d in stored)  # whole JPEGs, replaced live
        server.call("POST", f"/v1/egress/{info['id']}/stop")
        done = server.wait_status(info["id"], "COMPLETE")
    finally:
        server.stop_server()
    assert sorted(k for k in _keys(s3) if k.startswith("room-1/now")) == [key]
    last = tmp_path / "last.jpeg"
    last.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    frame = analysis.frame_at(last, 0)
    assert analysis.color_distance(analysis.region_color(frame, 0.4, 0.4, 0.2, 0.2), "#3cb44b") <= 50
    assert done["images"]["count"] >= 3  # captures, though one object holds them


def _keys(s3) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_gcs_and_azure_recordings_stored_byte_for_byte_with_working_links(kind, request, tmp_path):
    if kind == "gcs":
        gcs = request.getfixturevalue("gcs_server")
        config = gcs_config(gcs, request.getfixturevalue("gcs_account"))
        read = lambda key: gcs.read(BUCKET, key)  # noqa: E731
        secret = json.loads(config.credentials.get_secret_value())["private_key"].splitlines()[1]
    else:
        azure = request.getfixturevalue("azure_server")
        config = azure_config(azure)
        read = lambda key: azure_read(azure, key)  # noqa: E731
        secret = AZURITE_KEY
    server = serve(tmp_path)
    try:
        # The storage in the request (LiveKit's way: the file output names it).
        body = {"room_name": "room-2", **TINY, **BLUE, "file_outputs": [
            {"file_type": "MP4", "filepath": f"{kind}/", "gcp" if kind == "gcs" else "azure":
                json.loads(json.dumps(storage_of(config), default=str))}]}
        status, info, _ = server.call("POST", "/v1/egress/start", body)
        assert status == 201, info
        server.wait_status(info["id"], "ACTIVE")
        time.sleep(2)
        server.call("POST", f"/v1/egress/{info['id']}/stop")
        done = server.wait_status(info["id"], "COMPLETE")
        f = done["file"]
        assert re.fullmatch(rf"{kind}/room-2-\d{{4}}-\d\d-\d\dT\d{{6}}\.mp4", f["key"]), f
        assert f["storage"] == kind and not f["backupUsed"]
        data = read(f["key"])
        assert len(data) == f["size"]
        check_media(data, tmp_path)
        manifest = json.loads(read(f"{kind}/{info['id']}.json"))
        assert manifest["files"][0]["key"] == f["key"]
        _, link, _ = server.call("GET", f"/v1/recordings/rec_{info['id'][3:]}/download-url")
        assert fetch(link["downloadUrl"]) == data
        # Secrets never come back: not in the info, the listing, or the service's log.
        shown = json.dumps([done, server.call("GET", "/v1/egress")[1]])
        assert secret not in shown and secret not in server.log.read_text()
    finally:
        server.stop_server()


def test_storage_down_during_the_upload_then_back_loses_nothing(s3_server, tmp_path):
    server = serve(tmp_path, storage=storage_of(s3_config(s3_server)))
    s3 = _s3_client(s3_server)
    try:
        info = server.start(**TINY, **BLUE, file={"filepath": "outage/rec.mp4"},
                            segments={"filenamePrefix": "outage/hls/seg", "segmentDuration": 1})
        server.wait_status(info["id"], "ACTIVE")
        s3_server.stop()
        try:
            time.sleep(2.5)
            server.call("POST", f"/v1/egress/{info['id']}/stop")
            time.sleep(4)
            during = server.call("GET", f"/v1/egress/{info['id']}")[1]
            assert during["status"] == "ENDING", during  # still trying, not failed
            # ... and saying so: which attempt, and why the last one failed (the log says it too).
            retrying = during["upload"]
            assert retrying["status"] == "RETRYING" and retrying["attempt"] >= 1, during
            assert retrying["errorCode"] and retrying["error"] and retrying["key"], retrying
            assert "storing" in server.log.read_text() and "attempt" in server.log.read_text()
            staged = server.data_dir / "uploads" / info["id"] / "outage" / "rec.mp4"
            assert staged.is_file()
        finally:
            s3_server.start()
        done = server.wait_status(info["id"], "COMPLETE", timeout=90)
        assert done["upload"] is None, done  # the storage is back: nothing waits on it
        data = s3.get_object(Bucket=BUCKET, Key="outage/rec.mp4")["Body"].read()
        assert len(data) == done["file"]["size"]
        check_media(data, tmp_path)
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"outage/{info['id']}.json")["Body"].read())
        for seg in manifest["playlists"][0]["segments"]:
            assert s3.head_object(Bucket=BUCKET, Key=seg["key"])["ContentLength"] == seg["size"]
        assert not staged.exists()
    finally:
        server.stop_server()


def test_wrong_credentials_fail_clearly_and_keep_the_file(azure_server, tmp_path):
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="  # base64, not the account's key
    server = serve(tmp_path, storage=storage_of(azure_config(azure_server, account_key=wrong)))
    try:
        info = record(server, 2, file={"filepath": "denied.mp4"})
        done = server.wait_status(info["id"], "FAILED", timeout=60)
        assert done["errorCode"] == "STORAGE_AUTH_FAILED", done
        assert "azure" in done["error"] and wrong not in done["error"] and wrong not in server.log.read_text()
        kept = Path(done["file"]["location"])
        assert kept == server.data_dir / "uploads" / info["id"] / "denied.mp4" and kept.stat().st_size > 0
        check_media(kept.read_bytes(), tmp_path)
    finally:
        server.stop_server()


def test_backup_storage_takes_over_when_the_storage_refuses(s3_server, tmp_path):
    server = serve(tmp_path, backup_storage={"kind": "local"})
    try:
        # The request's bucket does not exist: a refusal for good, so the backup (this server's folder) keeps it.
        info = record(server, 2, file={"filepath": "kept/{room_name}.mp4"},
                      storage={"s3": storage_of(s3_config(s3_server, bucket="no-such-bucket"))})
        done = server.wait_status(info["id"], "COMPLETE", "FAILED", timeout=60)
        f = done["file"]
        assert (done["status"], f["storage"], f["backupUsed"], f["key"]) == ("COMPLETE", "local", True,
                                                                            "kept/room-1.mp4"), done
        assert Path(f["location"]) == server.data_dir / "recordings" / "kept" / "room-1.mp4"
        manifest = json.loads((server.data_dir / "recordings" / "kept" / f"{info['id']}.json").read_text())
        assert manifest["backup_used"] and manifest["storage"] == "local"
        _, link, _ = server.call("GET", f"/v1/recordings/rec_{info['id'][3:]}/download-url")
        assert link["downloadUrl"].startswith(f"{server.base}/v1/download/kept/room-1.mp4?")
        check_media(fetch(link["downloadUrl"]), tmp_path)
        assert not (server.data_dir / "uploads" / info["id"]).exists()
    finally:
        server.stop_server()


def test_restart_with_uploads_pending_resumes_them(s3_server, tmp_path):
    settings = dict(storage=storage_of(s3_config(s3_server)), stop_grace_s=2)
    server = serve(tmp_path, **settings)
    s3 = _s3_client(s3_server)
    try:
        info = server.start(**TINY, **BLUE, file={"filepath": "resume/rec.mp4"})
        server.wait_status(info["id"], "ACTIVE")
        s3_server.stop()
        try:
            time.sleep(2.5)
            server.call("POST", f"/v1/egress/{info['id']}/stop")
            server.wait_status(info["id"], "ENDING")
            time.sleep(2)
            server.stop_server()  # the delivery is cut short after stop_grace_s
        finally:
            s3_server.start()
        staged = server.data_dir / "uploads" / info["id"]
        assert (staged / "resume" / "rec.mp4").is_file() and (staged / "resume" / f"{info['id']}.json").is_file()
        server = serve(tmp_path, **settings)
        done = server.wait_status(info["id"], "COMPLETE", timeout=90)
        assert done["file"]["key"] == "resume/rec.mp4" and done["file"]["storage"] == "s3"
        data = s3.get_object(Bucket=BUCKET, Key="resume/rec.mp4")["Body"].read()
        assert len(data) == done["file"]["size"] and done["file"]["duration"] > 1.5
        check_media(data, tmp_path)
        assert not staged.exists()
    finally:
        server.stop_server()


def test_filename_templates_and_refused_paths(tmp_path):
    server = serve(tmp_path)
    try:
        for path, why in [("../escape", "'..'"), ("/etc/x.mp4", "relative"), ("a\x01b", "control"),
                          ("{nope}/x", "unknown placeholder"), ("s3://bucket/x.mp4", "not a URL"),
                          ("a//b.mp4", "empty path segment")]:
            status, err, _ = server.call("POST", "/v1/egress/start", {"roomName": "room-1", **TINY, **BLUE,
                                                                     "file": {"filepath": path}})
            assert status == 400 and err["error"]["details"]["field"] == "file.filepath", (path, err)
            assert why in err["error"]["message"], (path, err)
        status, err, _ = server.call("POST", "/v1/egress/start", {"roomName": "room-1", **TINY, **BLUE, "segments": {
            "filenamePrefix": "../hls/x"}})
        assert status == 400 and err["error"]["details"]["field"] == "segments.filenamePrefix", err
        # A wrong extension is corrected; the placeholders fill in; the manifest sits next to the file.
        info = record(server, 1.5, file={"fileType": "MP4", "filepath": "lk/{room_name}_{egress_id}.webm"})
        done = server.wait_status(info["id"], "COMPLETE")
        key = f"lk/room-1_{info['id']}.mp4"
        assert done["file"]["key"] == key and done["file"]["storage"] == "local"
        assert Path(done["file"]["location"]) == server.data_dir / "recordings" / key
        manifest = json.loads((server.data_dir / "recordings" / "lk" / f"{info['id']}.json").read_text())
        assert manifest["files"][0]["key"] == key and manifest["files"][0]["size"] == done["file"]["size"]
        assert done["manifest"] == str(server.data_dir / "recordings" / "lk" / f"{info['id']}.json")
    finally:
        server.stop_server()
