"""Test harness for the conformance suite: runs `outpost hub serve`, drives the `outpost` CLI, builds the
official SDK clients against it, and speaks raw MQTT/TLS for the malformed-input tests.

Each hub gets its own loopback address (the device SDK always dials port 8883, so one address per hub)
and uses that address as its host name; its HTTPS port is a free port on the same address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MQTT_PORT = 8883
API_VERSION = "2021-04-12"


def outpost_bin() -> Path:
    """The binary under test: $OUTPOST_BIN, else the debug build of this checkout."""
    return Path(os.environ.get("OUTPOST_BIN", REPO_ROOT / "target" / "debug" / "outpost"))


# --------------------------------------------------------------------------------------------------
# small utilities


def new_key() -> str:
    """A symmetric key as IoT Hub makes them: 32 random bytes, base64."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def run_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Runs a blocking SDK call on a daemon thread so a hang fails the test instead of freezing the suite."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name=f"timeout:{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"{what} did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def set_handler(client, name: str, handler, timeout: float = 15) -> None:
    """Assigns an SDK handler property; the SDK subscribes synchronously, so this can hang on a silent server."""
    run_with_timeout(lambda: setattr(client, name, handler), timeout, f"setting {name} (SUBSCRIBE)")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Polls until predicate() is truthy; returns its value or fails naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _bindable(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def hub_on_standard_ports(loopback, tmp_path, monkeypatch, request, amqp: bool = False):
    """A hub on the ports the SDKs dial without being told, HTTPS 443 (and AMQP 5671 when `amqp`), on a loopback
    address of its own; skips the test when no address has them free (not root?). A generator for fixtures to
    yield from."""
    ports = (443, 5671) if amqp else (443,)
    for _ in range(50):
        host = loopback.next()
        if all(_bindable(host, port) for port in ports):
            break
    else:
        pytest.skip(f"cannot bind ports {ports} on a loopback address (not root?)")
    data_dir = tmp_path / "hub-data"
    data_dir.mkdir()
    hub = Hub(data_dir, host, 443, tmp_path / "hub.log")
    if amqp:
        hub.amqp_port = 5671
    request.node._outpost_hubs = [hub]
    hub.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(hub.ca_path))
    yield hub
    try:
        hub.stop(timeout=5)
    except Exception:  # noqa: BLE001 - teardown must not hide the test's result
        if hub.proc is not None and hub.proc.poll() is None:
            hub.proc.kill()


def free_port(host: str) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


class LoopbackPool:
    """Hands out loopback addresses whose port 8883 is free: 127.0.N.2, 127.0.N.3, ... with N picked per
    test session (so two sessions on one machine rarely meet), skipping any address already in use."""

    def __init__(self) -> None:
        self._net = 10 + os.getpid() % 240
        self._host = 1
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            for _ in range(5000):
                self._host += 1
                if self._host > 254:
                    self._host = 2
                    self._net = 10 + (self._net - 9) % 240
                ip = f"127.0.{self._net}.{self._host}"
                if not port_open(ip, MQTT_PORT) and _bindable(ip, MQTT_PORT):
                    return ip
        raise RuntimeError("no free loopback address with port 8883 available")


# --------------------------------------------------------------------------------------------------
# the hub process


class HubError(AssertionError):
    """The hub did not start, or died."""


class Hub:
    """One `outpost hub serve` process on its own loopback address, with its data directory."""

    def __init__(self, data_dir: Path, host: str, https_port: int, log_path: Path, *,
                 database: str | None = None, public_host: str | None = None) -> None:
        self.data_dir = data_dir
        self.host = host
        # `--database URL` (PostgreSQL) when set; else the hub keeps SQLite in its data dir.
        self.database = database
        # The name clients use (`--hostname`): the bind address unless the hub sits behind a load balancer.
        self.public_host = public_host or host
        self.https_port = https_port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.connection_string: str = ""
        self.starts = 0
        # More `outpost hub serve` flags (limits, retention), used from the next start.
        self.extra_args: list[str] = []
        # The AMQP port (Event Hubs-compatible endpoint, C2D over AMQP): off unless a test asks for it.
        self.amqp_port = 0

    # -- lifecycle

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "hub already running"
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [
                str(outpost_bin()), "hub", "serve",
                "--data-dir", str(self.data_dir),
                "--hostname", self.public_host,
                "--bind", self.host,
                "--mqtt-port", str(MQTT_PORT),
                "--https-port", str(self.https_port),
                "--amqp-port", str(self.amqp_port),
                *(["--database", self.database] if self.database else []),
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, "RUST_BACKTRACE": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not (port_open(self.host, MQTT_PORT) and port_open(self.host, self.https_port)
                   and (self.amqp_port == 0 or port_open(self.host, self.amqp_port))):
            if self.proc.poll() is not None:
                raise HubError(f"hub exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise HubError(f"hub not listening on {self.host}:{MQTT_PORT} and :{self.https_port} "
                               f"within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)
        assert self.ca_path.is_file(), f"hub did not create {self.ca_path}"
        out = self.run_cli(["hub", "connection-string", "--data-dir", str(self.data_dir)], hub_env=False,
                           check=self.database is None)
        if out.returncode != 0:
            # A hub on PostgreSQL may keep its policies only in the database.
            out = self.run_cli(["hub", "connection-string", "--data-dir", str(self.data_dir),
                                "--database", self.database], hub_env=False)
        lines = [l.strip() for l in out.stdout.splitlines() if l.strip().startswith("HostName=")]
        assert len(lines) == 1, f"`hub connection-string` printed no connection string: {out.stdout!r}"
        self.connection_string = lines[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stops the process (SIGTERM, then SIGKILL after `timeout`), and waits until its ports are free."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        wait_for(lambda: not port_open(self.host, MQTT_PORT) and not port_open(self.host, self.https_port)
                 and (self.amqp_port == 0 or not port_open(self.host, self.amqp_port)),
                 10, "the hub's ports to close")

    def kill(self) -> None:
        """kill -9: nothing gets a chance to flush."""
        self.stop(signal.SIGKILL)

    def restart(self, hard: bool = False) -> None:
        """Stops the hub (gracefully, or with SIGKILL when hard) and starts it on the same data dir and ports."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- service side

    @property
    def hub_env(self) -> dict[str, str]:
        return {"OUTPOST_HUB_CONNECTION_STRING": self.connection_string, "OUTPOST_HUB_CA": str(self.ca_path)}

    def run_cli(self, args: list[str], *, hub_env: bool = True, check: bool = True, timeout: float = 30,
                input: str | None = None) -> subprocess.CompletedProcess:
        """Runs `outpost ARGS` (finding this hub through the environment) and returns the finished process."""
        env = {**os.environ, **(self.hub_env if hub_env else {})}
        try:
            cp = subprocess.run([str(outpost_bin()), *args], env=env, input=input, capture_output=True,
                                text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"`outpost {' '.join(args)}` did not finish within {timeout} s "
                                 f"(stdout={e.stdout!r}, stderr={e.stderr!r})") from None
        if check and cp.returncode != 0:
            raise AssertionError(f"`outpost {' '.join(args)}` exited {cp.returncode}\n"
                                 f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
        return cp

    def cli_json(self, *args: str, timeout: float = 30) -> Any:
        """Runs `outpost ARGS --output json` and parses its stdout."""
        cp = self.run_cli([*args, "--output", "json"], timeout=timeout)
        try:
            return json.loads(cp.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"`outpost {' '.join(args)} --output json` printed no JSON: {cp.stdout!r}") from e

    def registry(self):
        from azure.iot.hub import IoTHubRegistryManager

        return IoTHubRegistryManager.from_connection_string(self.connection_string)

    def configuration(self):
        from azure.iot.hub import IoTHubConfigurationManager

        return IoTHubConfigurationManager.from_connection_string(self.connection_string)

    def rest_session(self):
        """A requests session signed exactly as azure-iot-hub signs its own (ConnectionStringAuthentication)."""
        from azure.iot.hub.auth import ConnectionStringAuthentication

        session = ConnectionStringAuthentication(self.connection_string).signed_session()
        session.verify = str(self.ca_path)
        return session

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    # -- device side

    def device_connection_string(self, device_id: str, key: str, module_id: str | None = None) -> str:
        cs = f"HostName={self.host};DeviceId={device_id}"
        if module_id is not None:
            cs += f";ModuleId={module_id}"
        return cs + f";SharedAccessKey={key}"


def connection_string_fields(cs: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in cs.split(";") if part)


# --------------------------------------------------------------------------------------------------
# the `outpost monitor` consumer


class Monitor:
    """`outpost monitor --count N --timeout S` running in the background; `messages()` waits for it."""

    # The monitor has no readiness signal; give it this long to attach before messages are sent.
    ATTACH_DELAY = 1.5

    def __init__(self, hub: Hub, count: int, timeout: int = 30, from_start: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        self.count = count
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [str(outpost_bin()), "monitor", "--count", str(count), "--timeout", str(timeout),
             *(["--from-start"] if from_start else []), *extra],
            env={**os.environ, **hub.hub_env}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(self.ATTACH_DELAY)
        # Exiting 0 already is fine (with --from-start the messages may all be there); anything else is not.
        if self.proc.poll() not in (None, 0):
            out, err = self.proc.communicate()
            raise AssertionError(f"`outpost monitor` exited {self.proc.returncode} at once: {out!r} {err!r}")

    def messages(self) -> list[dict]:
        try:
            out, err = self.proc.communicate(timeout=self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"`outpost monitor --count {self.count}` still running after its timeout; "
                                 f"stdout so far: {out!r}") from None
        lines = [l for l in out.splitlines() if l.strip()]
        try:
            msgs = [json.loads(l) for l in lines]
        except json.JSONDecodeError as e:
            raise AssertionError(f"`outpost monitor` printed a line that is not JSON: {out!r}") from e
        assert len(msgs) == self.count, (
            f"`outpost monitor --count {self.count}` printed {len(msgs)} messages (exit {self.proc.returncode}):\n"
            f"{out}\nstderr: {err}")
        assert self.proc.returncode == 0, f"`outpost monitor` exited {self.proc.returncode}: {err}"
        return msgs

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def monitor_body(msg: dict) -> bytes:
    """The body of a monitor line: `body` (UTF-8 text) or `bodyBase64`."""
    if msg.get("bodyBase64") is not None:
        return base64.b64decode(msg["bodyBase64"])
    assert "body" in msg, f"monitor line has neither body nor bodyBase64: {msg}"
    return msg["body"].encode()


# --------------------------------------------------------------------------------------------------
# SAS tokens (AZURE-COMPAT §2.1), built independently of the SDKs for the raw tests


def device_sas(host: str, device_id: str, key: str, module_id: str | None = None, ttl: int = 3600,
               expiry: int | None = None) -> str:
    resource = f"{host}/devices/{device_id}" + (f"/modules/{module_id}" if module_id else "")
    sr = urllib.parse.quote(resource, safe="")
    se = expiry if expiry is not None else int(time.time()) + ttl
    sig = base64.b64encode(hmac.new(base64.b64decode(key), f"{sr}\n{se}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig.decode(), safe='')}&se={se}"


def service_sas(host: str, policy: str, key: str, ttl: int = 3600, expiry: int | None = None) -> str:
    sr = urllib.parse.quote_plus(host)
    se = expiry if expiry is not None else int(time.time()) + ttl
    sig = base64.b64encode(hmac.new(base64.b64decode(key), f"{sr}\n{se}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig.decode())}&se={se}&skn={policy}"


# --------------------------------------------------------------------------------------------------
# raw MQTT 3.1.1 over TLS


CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + _remaining_length(len(body)) + body


def connect_packet(client_id: str, username: str | None = None, password: str | None = None,
                   clean: bool = False, keepalive: int = 60) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _mqtt_str(client_id)
    if username is not None:
        body += _mqtt_str(username)
    if password is not None:
        body += _mqtt_str(password)
    return packet(CONNECT, 0, body)


def publish_packet(topic: str, payload: bytes, *, qos: int = 1, packet_id: int = 1) -> bytes:
    body = _mqtt_str(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(PUBLISH, qos << 1, body)


def subscribe_packet(packet_id: int, filters: Iterable[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_mqtt_str(f) + bytes([q]) for f, q in filters)
    return packet(SUBSCRIBE, 0x02, body)


def puback_packet(packet_id: int) -> bytes:
    return packet(PUBACK, 0, struct.pack("!H", packet_id))


def parse_publish(flags: int, body: bytes) -> tuple[str, int, int | None, bool, bytes]:
    """(topic, qos, packet id, dup, payload) of a PUBLISH body."""
    (n,) = struct.unpack("!H", body[:2])
    topic = body[2:2 + n].decode()
    qos = (flags >> 1) & 3
    rest = body[2 + n:]
    packet_id = None
    if qos:
        (packet_id,) = struct.unpack("!H", rest[:2])
        rest = rest[2:]
    return topic, qos, packet_id, bool(flags & 0x08), rest


class RawMqtt:
    """A TLS socket to a hub's MQTT port that sends bytes as given and reads whole packets."""

    def __init__(self, hub: Hub, timeout: float = 10.0, address: str | None = None) -> None:
        """`address` dials another address than `hub.host` (one replica of a `ReplicatedHub`) while the TLS name
        and the tokens stay the hub's."""
        ctx = ssl.create_default_context(cafile=str(hub.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # what the device SDK offers
        raw = socket.create_connection((address or hub.host, MQTT_PORT), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=hub.host)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.hub = hub

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_packet(self) -> tuple[int, int, bytes] | None:
        """(type, flags, body), or None at end of stream."""
        if not self._fill(2):
            return None
        i, mult, length = 1, 1, 0
        while True:
            if not self._fill(i + 1):
                return None
            byte = self.buf[i]
            length += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
        if not self._fill(i + length):
            return None
        first, body = self.buf[0], self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        return first >> 4, first & 0x0F, body

    def connect(self, device_id: str, key: str, module_id: str | None = None, token: str | None = None,
                clean: bool = False, keepalive: int = 60) -> int:
        """Sends a CONNECT as the device SDK does and returns the CONNACK return code."""
        return self.connect_ack(device_id, key, module_id, token, clean, keepalive)[1]

    def connect_ack(self, device_id: str, key: str, module_id: str | None = None, token: str | None = None,
                    clean: bool = False, keepalive: int = 60) -> tuple[bool, int]:
        """Like connect(), returning (session present, return code)."""
        client_id = device_id + (f"/{module_id}" if module_id else "")
        username = f"{self.hub.host}/{client_id}/?api-version=2019-10-01&DeviceClientType=outpost-compat-raw"
        password = token if token is not None else device_sas(self.hub.host, device_id, key, module_id)
        self.send(connect_packet(client_id, username, password, clean=clean, keepalive=keepalive))
        pkt = self.read_packet()
        assert pkt is not None, "connection closed instead of CONNACK"
        assert pkt[0] == CONNACK, f"expected CONNACK, got packet type {pkt[0]}"
        return bool(pkt[2][0] & 1), pkt[2][1]

    def expect(self, ptype: int, what: str) -> tuple[int, bytes]:
        """Reads packets until one of type `ptype` arrives (others are skipped); returns (flags, body)."""
        while True:
            pkt = self.read_packet()
            assert pkt is not None, f"connection closed while waiting for {what}"
            if pkt[0] == ptype:
                return pkt[1], pkt[2]

    def subscribe(self, *filters: str, packet_id: int = 1) -> bytes:
        self.send(subscribe_packet(packet_id, [(f, 1) for f in filters]))
        _, body = self.expect(SUBACK, "SUBACK")
        assert body[:2] == struct.pack("!H", packet_id)
        return body[2:]

    def next_publish(self) -> tuple[str, int, int | None, bool, bytes]:
        flags, body = self.expect(PUBLISH, "a PUBLISH")
        return parse_publish(flags, body)

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """True if the server closes the connection within `timeout` (whatever it sends first is ignored)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except socket.timeout:
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            return True
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# PostgreSQL and several replicas behind HAProxy (issue 10)


def postgres_bin_dir() -> Path | None:
    """The newest of Debian's PostgreSQL binary directories, or None when the package is not installed."""
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda d: int(d.parent.name)
                  if d.parent.name.isdigit() else 0)
    return dirs[-1] if dirs and (dirs[-1] / "initdb").is_file() else None


_database_flag: dict[str, bool] = {}


def binary_has_database_flag(binary: Path) -> bool:
    """Whether `outpost hub serve` takes `--database` (the PostgreSQL engine has landed in this binary)."""
    key = str(binary)
    if key not in _database_flag:
        cp = subprocess.run([str(binary), "hub", "serve", "--help"], capture_output=True, text=True, timeout=30)
        _database_flag[key] = "--database" in cp.stdout
    return _database_flag[key]



class Postgres:
    """A throwaway PostgreSQL server run by scripts/postgres.sh on 127.0.0.1:PORT (trust auth, user `outpost`
    who may create databases). `create_database()` gives each hub set-up a fresh database of its own."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = free_port("127.0.0.1")
        self._count = 0
        self._lock = threading.Lock()
        bin_dir = postgres_bin_dir()
        self.psql_bin = str(bin_dir / "psql") if bin_dir else "psql"

    def _script(self, *args: str, timeout: float = 120) -> None:
        cp = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "postgres.sh"), *args], capture_output=True,
                            text=True, timeout=timeout)
        if cp.returncode != 0:
            raise AssertionError(f"scripts/postgres.sh {' '.join(args)} exited {cp.returncode}:\n"
                                 f"{cp.stdout}\n{cp.stderr}")

    def start(self) -> None:
        self._script("start", str(self.work_dir), str(self.port))

    def stop(self) -> None:
        self._script("stop", str(self.work_dir))

    def url(self, database: str = "outpost") -> str:
        return f"postgres://outpost@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "outpost", timeout: float = 60) -> str:
        cp = subprocess.run([self.psql_bin, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                             "-p", str(self.port), "-U", "outpost", "-d", database, "-c", sql],
                            capture_output=True, text=True, timeout=timeout)
        if cp.returncode != 0:
            raise AssertionError(f"psql {sql!r} exited {cp.returncode}: {cp.stderr}")
        return cp.stdout

    def create_database(self) -> str:
        """A new empty database owned by `outpost`; returns its URL."""
        with self._lock:
            self._count += 1
            name = f"hub{self._count}_{os.getpid()}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ReplicatedHub(Hub):
    """Several `outpost hub serve` replicas on one PostgreSQL database, each on its own loopback address and data
    dir, behind HAProxy (TCP mode, round-robin) on an address of its own: the hub's public host name, given to
    every replica as `--hostname`. HAProxy listens on 8883 and on the same HTTPS port the replicas use, so the
    hub's connection string (`HostName=FRONT:PORT`) is right whichever replica printed it. Same interface as `Hub`;
    `replicas` are the processes (each a `Hub`, reachable directly on its own address)."""

    def __init__(self, work_dir: Path, loopback: "LoopbackPool", database: str, count: int = 3) -> None:
        front = loopback.next()
        hosts = [loopback.next() for _ in range(count)]
        for _ in range(100):
            port = free_port(front)
            if all(_bindable(h, port) for h in hosts):
                break
        else:
            raise RuntimeError("no HTTPS port free on the front address and every replica's")
        super().__init__(work_dir / "replica0-data", front, port, work_dir / "haproxy.log", database=database)
        self.work_dir = work_dir
        self.replicas = []
        for i, host in enumerate(hosts):
            data_dir = work_dir / f"replica{i}-data"
            data_dir.mkdir(parents=True, exist_ok=True)
            self.replicas.append(Hub(data_dir, host, port, work_dir / f"replica{i}.log", database=database,
                                     public_host=front))
        self.haproxy: subprocess.Popen | None = None
        self.haproxy_cfg = work_dir / "haproxy.cfg"

    # `extra_args` goes to every replica.
    @property
    def extra_args(self) -> list[str]:
        return self.replicas[0].extra_args if hasattr(self, "replicas") else []

    @extra_args.setter
    def extra_args(self, value: list[str]) -> None:
        for r in getattr(self, "replicas", []):
            r.extra_args = list(value)

    @property
    def proc(self):  # the first replica, for code that looks at `hub.proc`
        return self.replicas[0].proc if hasattr(self, "replicas") else None

    @proc.setter
    def proc(self, value) -> None:
        pass

    def _write_haproxy_cfg(self) -> None:
        def backend(name: str, port: int) -> str:
            servers = "\n".join(f"    server r{i} {r.host}:{port} check inter 300ms fall 1 rise 1"
                                 for i, r in enumerate(self.replicas))
            return (f"frontend {name}\n    bind {self.host}:{port}\n    default_backend {name}_replicas\n"
                    f"backend {name}_replicas\n    balance roundrobin\n{servers}\n")

        self.haproxy_cfg.write_text(
            "global\n    maxconn 8000\n"
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n"
            "    retries 3\n    option redispatch\n"
            + backend("mqtt", MQTT_PORT) + backend("https", self.https_port))

    def start(self, timeout: float = 30.0) -> None:
        # The first replica creates the hub's identity in the database; the others find it there.
        self.starts += 1
        for r in self.replicas:
            if not r.alive():
                r.start(timeout)
        cas = {r.ca_path.read_bytes() for r in self.replicas}
        assert len(cas) == 1, "the replicas present different CAs"
        if self.haproxy is None or self.haproxy.poll() is not None:
            self._write_haproxy_cfg()
            log = open(self.log_path, "ab")
            self.haproxy = subprocess.Popen(["haproxy", "-f", str(self.haproxy_cfg), "-db"],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()
            wait_for(lambda: self.haproxy.poll() is not None
                     or (port_open(self.host, MQTT_PORT) and port_open(self.host, self.https_port)),
                     timeout, "HAProxy to listen")
            if self.haproxy.poll() is not None:
                raise HubError(f"haproxy exited with {self.haproxy.returncode}:\n{self.log_tail()}")
        self.connection_string = self.replicas[0].connection_string

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stops every replica (and HAProxy)."""
        errors = []
        for r in self.replicas:
            try:
                r.stop(sig, timeout)
            except Exception as e:  # noqa: BLE001 - stop them all
                errors.append(e)
                if r.proc is not None and r.proc.poll() is None:
                    r.proc.kill()
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(5)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(5)
        if errors:
            raise errors[0]

    def alive(self) -> bool:
        return all(r.alive() for r in self.replicas) and self.haproxy is not None and self.haproxy.poll() is None

    def log_tail(self, n: int = 60) -> str:
        parts = [f"--- replica {i} ({r.host}) ---\n{r.log_tail(n)}" for i, r in enumerate(self.replicas)]
        return "\n".join(parts + [f"--- haproxy ({self.host}) ---\n{super().log_tail(n)}"])

    def log_text(self) -> str:
        return "\n".join(r.log_text() for r in self.replicas)

    def replica_session(self, index: int):
        """A requests session signed as `rest_session()` that talks to replica `index` directly (TLS name and
        Host header stay the hub's); `replica_url(index)` is its base URL."""
        from requests.adapters import HTTPAdapter

        front = self.host

        class Pinned(HTTPAdapter):
            def init_poolmanager(self, *args, **kwargs):
                kwargs["server_hostname"] = front
                kwargs["assert_hostname"] = front
                super().init_poolmanager(*args, **kwargs)

        session = self.rest_session()
        session.mount(self.replica_url(index), Pinned())
        session.headers["Host"] = f"{front}:{self.https_port}"
        return session

    def replica_url(self, index: int) -> str:
        return f"https://{self.replicas[index].host}:{self.https_port}"


class Clients:
    """Creates official device/module clients for a hub and shuts them all down at teardown."""

    def __init__(self) -> None:
        self.created = []

    def open(self, hub: Hub, device_id: str, key: str, module_id: str | None = None, *, connect: bool = True,
             **kwargs):
        from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient

        kwargs.setdefault("server_verification_cert", hub.ca_pem)
        kwargs.setdefault("connection_retry", False)
        cls = IoTHubModuleClient if module_id is not None else IoTHubDeviceClient
        client = cls.create_from_connection_string(hub.device_connection_string(device_id, key, module_id),
                                                    **kwargs)
        self.created.append(client)
        if connect:
            run_with_timeout(client.connect, 20, f"connect of {device_id}{'/' + module_id if module_id else ''}")
        return client

    def close_all(self) -> None:
        for client in self.created:
            try:
                run_with_timeout(client.shutdown, 10, "client shutdown")
            except Exception:  # noqa: BLE001 - a broken client must not hide the test's own result
                pass
