"""`$edgeAgent`'s direct methods through `outpost edge run`, called with the unmodified azure-iot-hub SDK as
`az iot hub invoke-module-method --module-id '$edgeAgent'` calls them: ping, RestartModule, GetModuleLogs (tail,
since, regex, loglevel, gzip, JSON content), UploadModuleLogs and UploadSupportBundle to a local HTTPS endpoint
this test runs (trusted through the edge's `[upload] trusted_ca`), GetTaskStatus; and `outpost edge
support-bundle`. The module is a Python process printing lines in Azure's recommended format; no Docker needed.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import ssl
import subprocess
import sys
import tarfile
import textwrap
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_harness import Edge, deployment, wait_reported
from harness import wait_for

CHATTY = textwrap.dedent("""\
    import datetime, os, time
    def stamp():
        return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " +00:00"
    print(f"<6> {stamp()} started pid={os.getpid()}", flush=True)
    for j in range(3000):
        print(f"<7> {stamp()} filler {j} " + "x" * 60)
    print("<6> 2020-01-01 00:00:00.000 +00:00 an ancient line", flush=True)
    i = 0
    while True:
        i += 1
        level = 3 if i % 5 == 0 else 7 if i % 3 == 0 else 6
        print(f"<{level}> {stamp()} tick {i}", flush=True)
        time.sleep(0.05)
""")


def chatty_module(tmp_path: Path) -> dict:
    script = tmp_path / "chatty.py"
    script.write_text(CHATTY)
    return {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
            "settings": {"path": sys.executable, "args": [str(script)]}}


def make_certificate(work: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `host` signed by it, with the openssl CLI."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca, key, csr, cert = (work / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=upload test CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")
    ext = work / "server.ext"
    ext.write_text(f"subjectAltName=IP:{host}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return ca, cert, key


class UploadServer:
    """An HTTPS endpoint that takes PUTs, as a blob container's SAS URL does, and keeps what arrived."""

    def __init__(self, work: Path, host: str) -> None:
        self.ca, cert, key = make_certificate(work, host)
        self.received: list[tuple[str, dict, bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((self.path, dict(self.headers), body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://{host}:{self.server.server_address[1]}/container?sv=2021&sig=c2lnbmF0dXJl"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def uploads(tmp_path, loopback):
    work = tmp_path / "upload"
    work.mkdir()
    server = UploadServer(work, loopback.next())
    yield server
    server.close()


@pytest.fixture
def edge(hub, tmp_path, loopback, uploads):
    daemon = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next(),
                  extra=f'\n[upload]\ntrusted_ca = "{uploads.ca}"\n')
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(deployment({"chatty": chatty_module(tmp_path)})))
    hub.run_cli(["deploy", daemon.device_id, str(manifest)])
    daemon.start()
    yield daemon
    daemon.cleanup()


def invoke(hub, edge, method: str, payload) -> tuple[int, object]:
    from azure.iot.hub.models import CloudToDeviceMethod
    result = hub.registry().invoke_device_module_method(
        edge.device_id, "$edgeAgent",
        CloudToDeviceMethod(method_name=method, payload=payload, response_timeout_in_seconds=30))
    return result.status, result.payload


def wait_connected(hub, edge) -> None:
    def ping():
        try:
            return invoke(hub, edge, "ping", {})
        except Exception:  # noqa: BLE001 - $edgeAgent is not connected yet
            return None
    assert wait_for(ping, 60, "$edgeAgent to answer ping", interval=0.5) == (200, None)


def logs_request(filter_: dict, encoding: str = "none", content_type: str = "text", id_: str = "chat") -> dict:
    return {"schemaVersion": "1.0", "items": [{"id": id_, "filter": filter_}], "encoding": encoding,
            "contentType": content_type}


def text_lines(answer: list, module: str = "chatty") -> list[str]:
    item = next(i for i in answer if i["id"] == module)
    if "payloadBytes" in item:
        return gzip.decompress(base64.b64decode(item["payloadBytes"])).decode().splitlines()
    return item["payload"].splitlines()


def wait_ticks(edge, count: int = 30) -> None:
    """Waits until the module has printed `count` ticks after its filler."""
    log = edge.data_dir / "processes" / "chatty" / "output.log"

    def ticked():
        try:
            with open(log, "rb") as f:
                f.seek(max(0, log.stat().st_size - 4096))
                return f" tick {count}\n".encode() in f.read()
        except OSError:
            return False
    wait_for(ticked, 60, f"{count} ticks in the module's output", interval=0.2)


def test_ping_restart_module_and_get_module_logs(hub, edge):
    wait_connected(hub, edge)
    wait_ticks(edge)

    status, answer = invoke(hub, edge, "GetModuleLogs", logs_request({"tail": 3}))
    assert status == 200, answer
    lines = text_lines(answer)
    assert len(lines) == 3 and all(" tick " in line for line in lines), lines

    # since: the ancient line is left out, the start line is in; regex picks them out of the ticks.
    _, answer = invoke(hub, edge, "GetModuleLogs", logs_request({"regex": "ancient|started"}))
    assert any("ancient" in line for line in text_lines(answer))
    _, answer = invoke(hub, edge, "GetModuleLogs", logs_request({"since": "1h", "regex": "ancient|started"}))
    lines = text_lines(answer)
    assert lines and all("started" in line for line in lines), lines

    # loglevel 3: only the errors; gzip, as `az ... | base64 -d | gzip -d` reads it.
    status, answer = invoke(hub, edge, "GetModuleLogs",
                            logs_request({"loglevel": 3, "tail": 5}, encoding="gzip"))
    assert status == 200 and "payloadBytes" in answer[0] and "payload" not in answer[0], answer
    lines = text_lines(answer)
    assert len(lines) == 5 and all(line.startswith("<3> ") for line in lines), lines

    _, answer = invoke(hub, edge, "GetModuleLogs", logs_request({"tail": 2}, content_type="json"))
    messages = json.loads(answer[0]["payload"])
    assert [m["moduleId"] for m in messages] == ["chatty", "chatty"]
    assert all(m["text"].startswith("tick ") and m["logLevel"] in (3, 6, 7) and m["timeStamp"] for m in messages)

    # No tail: 300 KB of output; the answer stays within IoT Hub's 128 KB and says it was cut.
    status, answer = invoke(hub, edge, "GetModuleLogs", logs_request({}))
    assert status == 200 and "128 KB" in answer[0]["truncated"], str(answer)[:300]
    assert len(json.dumps(answer)) <= 128 * 1024

    status, answer = invoke(hub, edge, "GetModuleLogs", {"schemaVersion": "1.0", "items": [{"id": "("}]})
    assert status == 400 and "regular expression" in answer["message"]

    pid_file = edge.data_dir / "processes" / "chatty" / "pid"
    old_pid = pid_file.read_text().strip()
    status, answer = invoke(hub, edge, "RestartModule", {"schemaVersion": "1.0", "id": "chatty"})
    assert (status, answer) == (200, None)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() not in ("", old_pid), 30, "a new PID")
    reported = wait_reported(hub, edge.device_id,
                             lambda r: (r.get("modules") or {}).get("chatty", {}).get("lastRestartTimeUtc"), 30,
                             "lastRestartTimeUtc in $edgeAgent's reported properties")
    assert reported["modules"]["chatty"]["runtimeStatus"] == "running"
    status, answer = invoke(hub, edge, "RestartModule", {"schemaVersion": "1.0", "id": "nobody"})
    assert status == 404 and "not deployed" in answer["message"]


def management_get(edge, path: str) -> str:
    """GETs `path` from the daemon's management socket (API version 2026-12-01); returns the body as text."""
    import socket
    separator = "&" if "?" in path else "?"
    request = (f"GET {path}{separator}api-version=2026-12-01 HTTP/1.1\r\nHost: localhost\r\n"
               f"Connection: close\r\n\r\n").encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(edge.data_dir / "management.sock"))
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", head
    if b"transfer-encoding: chunked" in head.lower():
        decoded, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            decoded, rest = decoded + rest[:n], rest[n + 2:]
        body = decoded
    return body.decode()


def wait_task(hub, edge, correlation_id: str) -> dict:
    def done():
        status, answer = invoke(hub, edge, "GetTaskStatus", {"schemaVersion": "1.0", "correlationId": correlation_id})
        assert status == 200, answer
        return answer if answer["status"] in ("Completed", "Failed") else None
    return wait_for(done, 60, "the upload task to finish", interval=0.5)


def test_uploads_reach_an_https_endpoint_and_the_support_bundle_has_no_key(hub, edge, uploads, tmp_path):
    wait_connected(hub, edge)
    wait_ticks(edge)

    request = dict(logs_request({"tail": 10}, encoding="gzip"), sasUrl=uploads.url)
    status, answer = invoke(hub, edge, "UploadModuleLogs", request)
    assert status == 200 and answer["status"] in ("NotStarted", "Running") and answer["correlationId"], answer
    task = wait_task(hub, edge, answer["correlationId"])
    assert task == {"status": "Completed", "message": "", "correlationId": answer["correlationId"]}
    path, headers, body = uploads.received[0]
    assert path.startswith(f"/container/{hub.host}/{edge.device_id}/chatty-") and path.endswith(
        ".log.gz?sv=2021&sig=c2lnbmF0dXJl"), path
    assert headers.get("x-ms-blob-type") == "BlockBlob"
    lines = gzip.decompress(body).decode().splitlines()
    assert len(lines) == 10 and all(" tick " in line for line in lines), lines

    status, answer = invoke(hub, edge, "GetTaskStatus", {"schemaVersion": "1.0", "correlationId": "no-such-task"})
    assert status == 200 and answer["status"] == "Unknown"
    status, answer = invoke(hub, edge, "UploadModuleLogs", dict(request, sasUrl="http://plain.example/c"))
    assert status == 400 and "https" in answer["message"]

    status, answer = invoke(hub, edge, "UploadSupportBundle",
                            {"schemaVersion": "1.0", "sasUrl": uploads.url, "since": "1h", "edgeRuntimeOnly": False})
    assert status == 200, answer
    assert wait_task(hub, edge, answer["correlationId"])["status"] == "Completed"
    path, _, uploaded = uploads.received[-1]
    assert "/support-bundle-" in path and ".tar.gz?" in path

    # A signature the daemon may log (the upload fails): it must not reach the bundle.
    invoke(hub, edge, "UploadModuleLogs", dict(request, sasUrl="https://127.0.0.1:1/c?sv=2021&sig=TopSecretSig42"))
    key = edge.config.read_text().split("SharedAccessKey=")[1].split('"')[0]
    out = tmp_path / "bundle.tar.gz"
    edge.cli("support-bundle", "--output", str(out))
    for bundle in (out.read_bytes(), uploaded):
        assert key.encode() not in gzip.decompress(bundle)
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            files = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in tar.getmembers()}
            for expected in ("README.txt", "versions.json", "settings.toml", "deployment.json",
                             "agent-reported.json", "stats.json", "check.txt", "daemon.log", "logs/chatty.log"):
                assert expected in files, sorted(files)
            read = lambda name: tar.extractfile(files[name]).read().decode()  # noqa: E731
            assert "SharedAccessKey=<redacted>" in read("settings.toml")
            assert "stderr" in read("README.txt")
            assert json.loads(read("deployment.json"))["desired"]["modules"]["chatty"]["type"] == "process"
            assert "tick" in read("logs/chatty.log")
            assert "configuration" in read("check.txt")
            assert "queued" in json.loads(read("stats.json"))
            # The daemon's own log, as it wrote it to stderr at start, without colours or secrets.
            daemon_log = read("daemon.log")
            assert "edge hub listening" in daemon_log and "connected to the hub as $edgeAgent" in daemon_log
            assert "\x1b[" not in daemon_log
            assert key not in daemon_log and "TopSecretSig42" not in daemon_log
            assert "daemon.log" in read("README.txt")

    # The same lines over the management API, the last ones with `tail`.
    lines = management_get(edge, "/daemon-logs?tail=3").splitlines()
    assert len(lines) == 3, lines
    everything = management_get(edge, "/daemon-logs")
    assert "edge hub listening" in everything and key not in everything
