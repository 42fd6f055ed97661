"""Storage: names, configs, signed URLs, and uploads to real servers on 127.0.0.1
(moto's S3, fake-gcs-server, azurite), including outages, refusals and the backup."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import boto3
import pytest
import yarl
from aiohttp import web
from azure.storage.blob import BlobServiceClient

from compositor.errors import InvalidRequest
from compositor.storage import (
    AUTH_FAILED,
    BUCKET_NOT_FOUND,
    UNREACHABLE,
    LocalSite,
    LocalStorage,
    NameValues,
    RetryPolicy,
    S3Storage,
    StoredFile,
    Uploader,
    UploadFailed,
    check_key,
    parse_storage,
    render_name,
    sign_local_url,
    store_file,
    verify_local_signature,
)
from compositor.storage.local import LocalBackend
from compositor.storage.local_urls import DOWNLOAD_PATH

from .support.storage_servers import (
    AZURITE_KEY,
    BUCKET,
    _s3_client,
    azure_config,
    azure_read,
    free_port,
    gcs_config,
    s3_config,
    service_account,
)

MiB = 1024 * 1024
FAST = RetryPolicy(window_s=20, first_delay_s=0.3, max_delay_s=1)
SIGNING_SECRET = b"local-signing-secret-for-tests"


# ---------------------------------------------------------------- servers (one of each per module)

@dataclass
class Target:
    """One storage under test and an independent way to read back what it holds."""

    kind: str
    config: object
    read: Callable[[str], bytes]
    local: LocalSite | None = None
    server: object = None


def _target(kind: str, request, tmp_path) -> Target:
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        client = _s3_client(server)
        return Target(kind, s3_config(server),
                      lambda key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read(), server=server)
    if kind == "gcs":
        server = request.getfixturevalue("gcs_server")
        account = request.getfixturevalue("gcs_account")
        return Target(kind, gcs_config(server, account), lambda key: server.read(BUCKET, key), server=server)
    if kind == "azure":
        server = request.getfixturevalue("azure_server")
        return Target(kind, azure_config(server), lambda key: azure_read(server, key), server=server)
    site = LocalSite(tmp_path / "stored", "http://127.0.0.1:1", SIGNING_SECRET)
    return Target(kind, LocalStorage(), lambda key: (site.root / key).read_bytes(), local=site)


@pytest.fixture(params=["s3", "gcs", "azure", "local"])
def target(request, tmp_path) -> Target:
    return _target(request.param, request, tmp_path)


@pytest.fixture(params=["s3", "gcs", "azure"])
def cloud(request, tmp_path) -> Target:
    return _target(request.param, request, tmp_path)


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def unique(name: str) -> str:
    return f"t{time.monotonic_ns()}/{name}"


async def http_get(url: str) -> tuple[int, bytes]:
    # encoded=True: send the signed query exactly as signed (re-quoting would break the signature).
    async with aiohttp.ClientSession() as session:
        async with session.get(yarl.URL(url, encoded=True)) as resp:
            return resp.status, await resp.read()


# ---------------------------------------------------------------- uploads

async def test_file_is_stored_byte_for_byte(target, tmp_path):
    src = tmp_path / "rec.mp4"
    data = random_file(src, 300 * 1024 + 7)
    key = unique("room-2022-10-04T011306.mp4")
    async with Uploader(target.config, local=target.local, retry=FAST) as uploader:
        result = await uploader.store_file(src, key)
    assert result == StoredFile(location=result.location, key=key, size=len(data), backend=target.kind)
    assert target.read(key) == data
    assert result.location.endswith(key) and key in result.location
    assert src.read_bytes() == data, "the local file must stay as it was"


async def test_hls_folder_is_stored_whole_playlist_last(target, tmp_path):
    folder = tmp_path / "hls"
    segments = {f"seg_{i:05d}.ts": random_file(folder / f"seg_{i:05d}.ts", 50_000 + i) for i in range(3)}
    playlist = "#EXTM3U\n#EXT-X-VERSION:3\n" + "".join(f"#EXTINF:2.0,\n{n}\n" for n in segments) + "#EXT-X-ENDLIST\n"
    (folder / "index.m3u8").write_text(playlist)
    prefix = unique("room-hls")
    order: list[str] = []
    async with Uploader(target.config, local=target.local, retry=FAST) as uploader:
        put = uploader.primary.put

        async def spy(path, key, content_type):
            order.append(key)
            await put(path, key, content_type)

        uploader.primary.put = spy
        results = await uploader.store_folder(folder, prefix)
    assert sorted(r.key for r in results) == sorted(f"{prefix}/{n}" for n in [*segments, "index.m3u8"])
    assert order[-1] == f"{prefix}/index.m3u8", "the playlist goes up after its segments"
    for name, data in segments.items():
        assert target.read(f"{prefix}/{name}") == data
    assert target.read(f"{prefix}/index.m3u8").decode() == playlist


async def test_large_file_goes_up_in_parts(cloud, tmp_path):
    src = tmp_path / "big.mp4"
    data = random_file(src, 11 * MiB + 12345)
    key = unique("big.mp4")
    if cloud.kind == "s3":
        config = cloud.config.model_copy(update=dict(
            multipart_threshold=5 * MiB, part_size=5 * MiB, metadata={"room": "standup"}, tagging="team=video&kind=rec",
            content_disposition='attachment; filename="standup.mp4"'))
    elif cloud.kind == "gcs":
        config = cloud.config.model_copy(update=dict(chunk_size=5 * MiB))
    else:
        config = cloud.config.model_copy(update=dict(block_size=5 * MiB))
    result = await store_file(config, src, key, retry=FAST)
    assert result.size == len(data)
    assert cloud.read(key) == data
    if cloud.kind == "s3":
        client = _s3_client(cloud.server)
        head = client.head_object(Bucket=BUCKET, Key=key)
        assert head["ETag"].strip('"').endswith("-3"), f"not a 3-part multipart upload: {head['ETag']}"
        assert head["ContentType"] == "video/mp4"
        assert head["Metadata"] == {"room": "standup"}
        assert head["ContentDisposition"] == 'attachment; filename="standup.mp4"'
        tags = client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
        assert {t["Key"]: t["Value"] for t in tags} == {"team": "video", "kind": "rec"}
    elif cloud.kind == "azure":
        blob = BlobServiceClient.from_connection_string(cloud.server.connection_string).get_blob_client(BUCKET, key)
        committed, _ = blob.get_block_list("committed")
        assert len(committed) == 3
        assert blob.get_blob_properties().content_settings.content_type == "video/mp4"


@pytest.fixture
async def download_server(tmp_path):
    """The /v1/download route the service will add, reduced to its contract: verify, then serve."""
    site_holder: dict = {}

    async def download(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if not verify_local_signature(key, request.query.get("expires", ""), request.query.get("sig", ""),
                                      SIGNING_SECRET):
            return web.Response(status=403)
        return web.FileResponse(site_holder["site"].root / key)

    app = web.Application()
    app.router.add_get(DOWNLOAD_PATH + "{key:.+}", download)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    site = LocalSite(tmp_path / "served", f"http://127.0.0.1:{port}", SIGNING_SECRET)
    site_holder["site"] = site
    yield site
    await runner.cleanup()


async def test_presigned_url_downloads_the_same_bytes(target, tmp_path, download_server):
    if target.kind == "local":
        target.local = download_server
    src = tmp_path / "clip.webm"
    data = random_file(src, 100 * 1024)
    key = unique("room name/clip.webm")  # a space: the URL must quote it
    async with Uploader(target.config, local=target.local, retry=FAST) as uploader:
        await uploader.store_file(src, key)
        url = await uploader.presign(key, 300)
    status, body = await http_get(url)
    assert status == 200 and body == data
    if target.kind in ("azure", "local"):  # these check signatures: a forged one must be refused
        forged = url.replace("sig=", "sig=0")
        assert (await http_get(forged))[0] == 403


async def test_presign_expiry_is_bounded(target):
    async with Uploader(target.config, local=target.local) as uploader:
        for bad in (0, 8 * 24 * 3600):
            with pytest.raises(InvalidRequest) as err:
                await uploader.presign("a.mp4", bad)
            assert err.value.details == {"field": "expires"}


async def test_storage_down_then_back_within_the_window(cloud, tmp_path):
    src = tmp_path / "rec.mp4"
    data = random_file(src, 200 * 1024)
    key = unique("outage.mp4")
    notices = []
    seen = asyncio.Event()

    def on_retry(notice):
        notices.append(notice)
        seen.set()

    cloud.server.stop()
    try:
        uploader = Uploader(cloud.config, retry=RetryPolicy(window_s=40, first_delay_s=0.5, max_delay_s=1),
                            on_retry=on_retry)
        task = asyncio.create_task(uploader.store_file(src, key))
        # GCS's client may itself retry a refused connection a few seconds before we hear of it.
        try:
            await asyncio.wait_for(seen.wait(), 8)
        except TimeoutError:
            pass
        assert not task.done(), f"the upload ended while the storage was down: {task}"
    finally:
        await asyncio.to_thread(cloud.server.start)
    result = await asyncio.wait_for(task, 40)
    await uploader.close()
    assert result.size == len(data) and not result.backup_used
    assert cloud.read(key) == data
    assert notices and notices[0].error.code == UNREACHABLE and notices[0].backend == cloud.kind


async def test_no_such_bucket_is_refused_for_good(cloud, tmp_path):
    src = tmp_path / "rec.mp4"
    data = random_file(src, 10_000)
    config = cloud.config.model_copy(update={"container_name" if cloud.kind == "azure" else "bucket": "missing-one"})
    started = time.monotonic()
    with pytest.raises(UploadFailed) as err:
        await store_file(config, src, unique("x.mp4"), retry=RetryPolicy(window_s=30))
    assert err.value.code == BUCKET_NOT_FOUND, err.value.to_dict()
    assert "missing-one" in err.value.message
    assert time.monotonic() - started < 5, "a refusal for good is not retried"
    assert src.read_bytes() == data


def _assert_refused_quietly(err: UploadFailed, secret: str, started: float) -> None:
    assert err.code == AUTH_FAILED, err.to_dict()
    assert time.monotonic() - started < 5, "bad credentials are not retried"
    for text in (err.message, str(err), repr(err), json.dumps(err.to_dict())):
        assert secret not in text


async def test_azure_wrong_key_is_auth_failed(azure_server, tmp_path):
    src = tmp_path / "rec.mp4"
    data = random_file(src, 10_000)
    wrong = base64.b64encode(os.urandom(64)).decode()
    started = time.monotonic()
    with pytest.raises(UploadFailed) as err:
        await store_file(azure_config(azure_server, account_key=wrong), src, unique("x.mp4"), retry=FAST)
    _assert_refused_quietly(err.value, wrong, started)
    assert src.read_bytes() == data


async def test_s3_wrong_secret_is_auth_failed(s3_server, tmp_path):
    src = tmp_path / "rec.mp4"
    data = random_file(src, 10_000)
    # moto checks signatures only with IAM auth on; the first 3 requests (below) set up a real user.
    s3_server.set_auth(True, free_requests=3)
    try:
        iam = boto3.client("iam", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")
        iam.create_user(UserName="recorder")
        creds = iam.create_access_key(UserName="recorder")["AccessKey"]
        iam.put_user_policy(UserName="recorder", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        wrong = "W" * 40
        started = time.monotonic()
        with pytest.raises(UploadFailed) as err:
            await store_file(s3_config(s3_server, access_key=creds["AccessKeyId"], secret=wrong), src,
                             unique("x.mp4"), retry=FAST)
        _assert_refused_quietly(err.value, wrong, started)
        assert "SignatureDoesNotMatch" in err.value.message
        # The same user with its real secret gets in: the refusal above was about the secret.
        key = unique("ok.mp4")
        await store_file(s3_config(s3_server, access_key=creds["AccessKeyId"], secret=creds["SecretAccessKey"]),
                         src, key, retry=FAST)
    finally:
        s3_server.set_auth(False)
    assert _s3_client(s3_server).get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


async def test_gcs_wrong_key_is_auth_failed(gcs_server, gcs_account, token_server, tmp_path):
    src = tmp_path / "rec.mp4"
    data = random_file(src, 10_000)
    forged, _ = service_account(token_server.uri, email=gcs_account["client_email"])  # right name, wrong key
    started = time.monotonic()
    with pytest.raises(UploadFailed) as err:
        await store_file(gcs_config(gcs_server, forged), src, unique("x.mp4"), retry=FAST)
    _assert_refused_quietly(err.value, forged["private_key"].splitlines()[1], started)
    assert src.read_bytes() == data
    granted = token_server.granted
    await store_file(gcs_config(gcs_server, gcs_account), src, unique("ok.mp4"), retry=FAST)
    assert token_server.granted > granted, "the real key went through the token service"


async def test_backup_takes_the_file_when_the_primary_refuses(s3_server, tmp_path):
    src = tmp_path / "rec.mp4"
    data = random_file(src, 20_000)
    site = LocalSite(tmp_path / "backup")
    key = unique("rec.mp4")
    result = await store_file(s3_config(s3_server, bucket="no-such-bucket"), src, key, backup=LocalStorage(),
                              local=site, retry=FAST)
    assert result.backup_used and result.backend == "local" and result.size == len(data)
    assert (site.root / key).read_bytes() == data
    assert src.read_bytes() == data


async def test_backup_takes_a_whole_folder(azure_server, s3_server, tmp_path):
    folder = tmp_path / "hls"
    files = {n: random_file(folder / n, 5_000) for n in ("a_00000.ts", "a_00001.ts", "a.m3u8")}
    wrong = azure_config(azure_server, account_key=base64.b64encode(b"not the key").decode())
    prefix = unique("hls")
    async with Uploader(wrong, backup=s3_config(s3_server), retry=FAST) as uploader:
        results = await uploader.store_folder(folder, prefix)
    assert all(r.backup_used and r.backend == "s3" for r in results) and len(results) == 3
    client = _s3_client(s3_server)
    for name, data in files.items():
        assert client.get_object(Bucket=BUCKET, Key=f"{prefix}/{name}")["Body"].read() == data


async def test_both_failing_reports_the_primary_and_the_backup(s3_server, tmp_path):
    src = tmp_path / "rec.mp4"
    random_file(src, 1_000)
    with pytest.raises(UploadFailed) as err:
        await store_file(s3_config(s3_server, bucket="gone-primary"), src, "x.mp4",
                         backup=s3_config(s3_server, bucket="gone-backup"), retry=FAST)
    assert err.value.code == BUCKET_NOT_FOUND
    assert err.value.details["backup"]["code"] == BUCKET_NOT_FOUND
    assert "gone-primary" in err.value.message and "gone-backup" in err.value.message
    assert src.exists()


async def test_unreachable_storage_gives_up_after_the_window(tmp_path):
    src = tmp_path / "rec.mp4"
    data = random_file(src, 1_000)
    dead = f"http://127.0.0.1:{free_port()}"
    notices = []
    uploader = Uploader(S3Storage(bucket=BUCKET, endpoint=dead, access_key="a", secret="b", force_path_style=True),
                        retry=RetryPolicy(window_s=1.0, first_delay_s=0.2, max_delay_s=0.4),
                        on_retry=notices.append)
    with pytest.raises(UploadFailed) as err:
        await uploader.store_file(src, "x.mp4")
    await uploader.close()
    assert err.value.code == UNREACHABLE
    assert err.value.details["attempts"] >= 2 and len(notices) == err.value.details["attempts"] - 1
    assert notices[0].delay_s == 0.2 and all(n.delay_s <= 0.4 for n in notices), "backoff doubles up to its cap"
    assert src.read_bytes() == data


async def test_missing_local_file_and_bad_keys_are_refused(tmp_path):
    site = LocalSite(tmp_path / "stored")
    async with Uploader(LocalStorage(), local=site) as uploader:
        with pytest.raises(UploadFailed, match="local file missing"):
            await uploader.store_file(tmp_path / "nope.mp4", "a.mp4")
        (tmp_path / "f.mp4").write_bytes(b"x")
        for bad in ("/etc/x.mp4", "../x.mp4", "a/../../x.mp4", "a\nb.mp4", "a//b.mp4", ""):
            with pytest.raises(InvalidRequest):
                await uploader.store_file(tmp_path / "f.mp4", bad)
    assert not site.root.exists() or not any(site.root.rglob("*"))


def test_local_storage_never_leaves_its_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "stored"
    root.mkdir()
    (root / "link").symlink_to(outside)
    backend = LocalBackend(LocalSite(root))
    with pytest.raises(UploadFailed, match="leaves the storage folder"):
        backend.path_for("link/x.mp4")
    assert backend.path_for("a/b.mp4") == root.resolve() / "a" / "b.mp4"


# ---------------------------------------------------------------- local signed URLs

def test_local_url_sign_and_verify():
    now = 1_700_000_000
    url = sign_local_url("https://rec.example.com/", "room a/rec.mp4", "s3cret", 60, now=now)
    parsed = yarl.URL(url, encoded=True)
    assert str(parsed.with_query(None)) == "https://rec.example.com/v1/download/room%20a/rec.mp4"
    expires, sig = parsed.query["expires"], parsed.query["sig"]
    assert int(expires) == now + 60 and len(sig) == 64
    key = "room a/rec.mp4"
    assert verify_local_signature(key, expires, sig, "s3cret", now=now + 59)
    assert not verify_local_signature(key, expires, sig, "s3cret", now=now + 60), "expired"
    assert not verify_local_signature(key, int(expires) + 3600, sig, "s3cret", now=now), "expiry moved"
    assert not verify_local_signature("room a/other.mp4", expires, sig, "s3cret", now=now), "other key"
    assert not verify_local_signature(key, expires, sig, "other secret", now=now), "other secret"
    tampered = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert not verify_local_signature(key, expires, tampered, "s3cret", now=now)
    for junk in ("", "zz", "é" * 64):
        assert not verify_local_signature(key, expires, junk, "s3cret", now=now)
    assert not verify_local_signature(key, "soon", sig, "s3cret", now=now)
    with pytest.raises(ValueError):
        sign_local_url("https://x", key, "", 60)


# ---------------------------------------------------------------- names

VALUES = NameValues(room_name="testroom", room_id="RM_10719607", egress_id="EG_abc123def456",
                    publisher_identity="david", track_id="TR_SKasdXCVgHsei", track_type="audio",
                    track_source="microphone")
NOW = datetime(2022, 10, 4, 1, 13, 6, 789000, tzinfo=timezone.utc)


@pytest.fixture
def utc_tz(monkeypatch):
    """{time} is the server's local time: pin the zone so the expected names hold anywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("template, extension, expected", [
    ("", "mp4", "testroom-2022-10-04T011306.mp4"),
    (None, "ogg", "testroom-2022-10-04T011306.ogg"),
    ("livekit-recordings/", "mp4", "livekit-recordings/testroom-2022-10-04T011306.mp4"),
    ("{room_name}/{time}", "mp4", "testroom/2022-10-04T011306.mp4"),
    ("{room_id}-{publisher_identity}.mp4", "mp4", "RM_10719607-david.mp4"),
    ("{track_type}-{track_source}-{track_id}", "ogg", "audio-microphone-TR_SKasdXCVgHsei.ogg"),
    ("{egress_id}", "webm", "EG_abc123def456.webm"),
    ("{utc}", "mp4", "20221004011306789.mp4"),
    ("a/{room_name}.mp4", "webm", "a/testroom.webm"),       # wrong media extension replaced
    ("talk.v2", "mp4", "talk.v2.mp4"),                      # unknown extension kept, ours added
    ("thumb.jpeg", "jpg", "thumb.jpeg"),                    # jpeg is jpg
    ("live/{room_name}", "m3u8", "live/testroom.m3u8"),
    ("seg/{room_name}", None, "seg/testroom"),              # a segment prefix: no extension
])
def test_templates(utc_tz, template, extension, expected):
    assert render_name(template, VALUES, extension, now=NOW) == expected


def test_substituted_values_stay_in_their_segment(utc_tz):
    values = NameValues(room_name="../etc/pass\x00wd", publisher_identity="..", room_id="a\\b:c")
    name = render_name("{room_name}/{publisher_identity}-{room_id}", values, "mp4", now=NOW)
    assert name == ".._etc_pass_wd/__-a_b_c.mp4"
    assert render_name("{room_name}/{time}", NameValues(), "mp4", now=NOW) == "2022-10-04T011306.mp4"
    # No room (a web egress): the default name is the time alone, as LiveKit's, not "-{time}".
    assert render_name("pages/", NameValues(), "mp4", now=NOW) == "pages/2022-10-04T011306.mp4"


@pytest.mark.parametrize("template, reason", [
    ("/abs/x.mp4", "relative"),
    ("C:\\rec\\x.mp4", "relative"),
    ("a/../../x.mp4", ".."),
    ("..", ".."),
    ("a\x07b", "control"),
    ("a\nb", "control"),
    ("{room}", "unknown placeholder"),
    ("{Room_Name}", "unknown placeholder"),
    ("{room_name", "unmatched"),
    ("s3://bucket/x.mp4", "not a URL"),
    ("a//b", "empty path segment"),
])
def test_refused_templates(template, reason):
    with pytest.raises(InvalidRequest) as err:
        render_name(template, VALUES, "mp4", field="file.filepath")
    assert reason in err.value.message
    assert err.value.details == {"field": "file.filepath"}
    assert err.value.code == "INVALID_ARGUMENT"


def test_check_key_refuses_long_and_dotted_keys():
    with pytest.raises(InvalidRequest, match="longer than 1024"):
        check_key("a" * 1025)
    for bad in ("a/./b", "a/", "."):
        with pytest.raises(InvalidRequest):
            check_key(bad)
    assert check_key("room/2022.mp4") == "room/2022.mp4"


# ---------------------------------------------------------------- configs

GCS_INFO = {"type": "service_account", "client_email": "a@p.iam.gserviceaccount.com",
            "private_key": "-----BEGIN PRIVATE KEY-----\nPRIVATEBITS\n-----END PRIVATE KEY-----\n"}


@pytest.mark.parametrize("data, secret", [
    ({"kind": "s3", "access_key": "AKIA", "secret": "SUPERSECRET1", "session_token": "TOKEN123", "region": "eu"},
     "SUPERSECRET1"),
    ({"s3": {"accessKey": "AKIA", "secret": "SUPERSECRET1", "sessionToken": "TOKEN123", "region": "eu"}},
     "TOKEN123"),
    ({"gcp": {"credentials": json.dumps(GCS_INFO)}}, "PRIVATEBITS"),
    ({"kind": "gcs", "credentials": base64.b64encode(json.dumps(GCS_INFO).encode()).decode()}, "PRIVATEBITS"),
    ({"azure": {"accountName": "acct", "accountKey": AZURITE_KEY, "containerName": "c"}}, AZURITE_KEY),
])
def test_configs_never_show_secrets(data, secret):
    data = json.loads(json.dumps(data))
    inner = data.get("s3") or data.get("gcp") or data.get("azure") or data
    if "accountName" not in inner:
        inner.setdefault("bucket", "b")
    config = parse_storage(data)
    for text in (repr(config), str(config), json.dumps(config.model_dump()), config.model_dump_json()):
        assert secret not in text
    assert "***" in config.model_dump_json()
    assert secret in json.dumps(config.with_secrets())
    assert parse_storage(config.with_secrets()) == config, "what the worker receives parses back the same"


def test_config_kinds_and_livekit_shapes():
    assert isinstance(parse_storage({"kind": "local"}), LocalStorage)
    s3 = parse_storage({"s3": {"access_key": "k", "secret": "s", "bucket": "b", "endpoint": "https://minio:9000/",
                               "forcePathStyle": True, "contentDisposition": "inline", "tagging": "a=1&b=2"}})
    assert (s3.kind, s3.endpoint, s3.force_path_style, s3.content_disposition) == ("s3", "https://minio:9000", True,
                                                                                   "inline")
    gcs = parse_storage({"kind": "gcp", "bucket": "b", "credentials": GCS_INFO})
    assert gcs.kind == "gcs" and json.loads(gcs.credentials.get_secret_value()) == GCS_INFO


@pytest.mark.parametrize("data, field, words", [
    ({"bucket": "b"}, "storage", "kind is required"),
    ({"kind": "ftp"}, "storage", "kind must be"),
    ({"kind": "s3", "bucket": "b"}, "storage", "region is required"),
    ({"kind": "s3", "bucket": "b", "region": "r", "secret": "LEAKME"}, "storage", "go together"),
    ({"kind": "s3", "bucket": "a/b", "region": "r"}, "storage.bucket", "plain name"),
    ({"kind": "s3", "bucket": "b", "endpoint": "ftp://x"}, "storage.endpoint", "http"),
    ({"kind": "s3", "bucket": "b", "endpoint": "https://u:LEAKME@x"}, "storage.endpoint", "credentials"),
    ({"kind": "s3", "bucket": "b", "region": "r", "part_size": 1024}, "storage.part_size", "greater"),
    ({"kind": "s3", "bucket": "b", "region": "r", "proxy": {}}, "storage.proxy", "Extra"),
    ({"kind": "gcs", "bucket": "b", "credentials": "{LEAKME"}, "storage.credentials", "JSON"),
    ({"kind": "gcs", "bucket": "b", "credentials": {"type": "user", "private_key": "LEAKME"}},
     "storage.credentials", "service account"),
    ({"kind": "azure", "account_name": "a", "account_key": "LEAKME!", "container_name": "c"},
     "storage.account_key", "base64"),
])
def test_bad_configs_name_the_field_without_quoting_it(data, field, words):
    with pytest.raises(InvalidRequest) as err:
        parse_storage(data)
    assert words in err.value.message
    assert err.value.details == {"field": field}
    assert "LEAKME" not in err.value.message


def test_local_storage_needs_the_service_folder(tmp_path):
    with pytest.raises(UploadFailed, match="not set up"):
        Uploader(LocalStorage())
