"""MQTT over WebSocket (issue 15): the unmodified device SDK with `websockets=True` dials
wss://{HostName}:443/$iothub/websocket with subprotocol `mqtt` (AZURE-COMPAT §1.1), and the hub's HTTPS listener
upgrades it and serves the same MQTT head as port 8883.

The SDK always dials port 443, so each hub here listens for HTTPS on 443 of its own loopback address (root may
bind it; a test process that may not is skipped)."""

from __future__ import annotations

import base64
import os
import queue
import socket
import ssl
import struct
import time

import pytest
from azure.iot.device import Message, MethodResponse
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties

from harness import (Hub, Monitor, RawMqtt, hub_on_standard_ports, connect_packet, device_sas, monitor_body,
                     run_with_timeout, set_handler)

pytestmark = pytest.mark.docker_free  # the real SDKs and the outpost binary only: no Docker

HTTPS_PORT = 443  # what the SDK dials with websockets=True
PATH = "/$iothub/websocket"


@pytest.fixture
def hub(binary, loopback, tmp_path, monkeypatch, request):
    """A hub with HTTPS on port 443 of its own loopback address."""
    yield from hub_on_standard_ports(loopback, tmp_path, monkeypatch, request)


@pytest.fixture
def registry(hub):
    return hub.registry()


def new_device(registry, device_id: str) -> str:
    return registry.create_device_with_sas(device_id, "", "", "enabled").authentication.symmetric_key.primary_key


def ws_client(clients, hub: Hub, device_id: str, key: str):
    return clients.open(hub, device_id, key, websockets=True)


class RawWebSocket:
    """A TLS socket to the hub's HTTPS port, upgraded to WebSocket as paho does, sending frames as given."""

    def __init__(self, hub: Hub, protocol: str | None = "mqtt", timeout: float = 10.0) -> None:
        ctx = ssl.create_default_context(cafile=str(hub.ca_path))
        raw = socket.create_connection((hub.host, HTTPS_PORT), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=hub.host)
        self.sock.settimeout(timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {PATH} HTTP/1.1\r\nHost: {hub.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   + (f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else "") + "\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        head, _, self.buf = head.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1]) if head else 0
        self.headers = head.decode(errors="replace").lower()

    def send_frame(self, payload: bytes, opcode: int = 0x2) -> None:
        """One final frame (binary by default), masked as a client must."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the server's next frame (servers do not mask), or None at end of stream."""
        if not self._fill(2):
            return None
        opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        at = 2
        if n == 126:
            if not self._fill(4):
                return None
            (n,) = struct.unpack("!H", self.buf[2:4])
            at = 4
        elif n == 127:
            if not self._fill(10):
                return None
            (n,) = struct.unpack("!Q", self.buf[2:10])
            at = 10
        if not self._fill(at + n):
            return None
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return opcode, payload

    def read_mqtt(self) -> bytes:
        """The bytes of the next binary message."""
        while True:
            frame = self.read_frame()
            assert frame is not None, "the hub closed the WebSocket"
            if frame[0] == 0x2:
                return frame[1]

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """True if the hub ends the connection (a close frame or the end of the stream) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                frame = self.read_frame()
                if frame is None or frame[0] == 0x8:
                    return True
        except socket.timeout:
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()


def test_sdk_over_websockets_sends_telemetry_answers_methods_and_gets_its_twin(hub, registry, clients):
    key = new_device(registry, "dev1")
    client = ws_client(clients, hub, "dev1", key)

    # telemetry arrives in `outpost monitor`
    monitor = Monitor(hub, count=1)
    try:
        msg = Message("over port 443")
        msg.custom_properties["via"] = "websocket"
        run_with_timeout(lambda: client.send_message(msg), 15, "send_message over WebSocket")
        (received,) = monitor.messages()
    finally:
        monitor.close()
    assert monitor_body(received) == b"over port 443"
    assert received["deviceId"] == "dev1"

    # a desired patch reaches the device
    patches = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)
    registry.update_twin("dev1", Twin(properties=TwinProperties(desired={"interval": 7})), "*")
    patch = patches.get(timeout=15)
    assert patch["interval"] == 7

    # a direct method is answered
    def answer(request):
        client.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"echo": request.payload}))

    set_handler(client, "on_method_request_received", answer)
    result = registry.invoke_device_method("dev1", CloudToDeviceMethod(
        method_name="reboot", payload={"delay": 1}, response_timeout_in_seconds=10))
    assert result.status == 200 and result.payload == {"echo": {"delay": 1}}

    # the twin, with the desired property and a reported one
    run_with_timeout(lambda: client.patch_twin_reported_properties({"firmware": "1.2"}), 15, "patch reported")
    twin = run_with_timeout(client.get_twin, 15, "get_twin over WebSocket")
    assert twin["desired"]["interval"] == 7
    assert twin["reported"]["firmware"] == "1.2"


def test_mqtt_framing_is_independent_of_websocket_messages(hub, registry):
    key = new_device(registry, "dev1")
    ws = RawWebSocket(hub)
    try:
        assert ws.status == 101, ws.headers
        assert "sec-websocket-protocol: mqtt" in ws.headers
        username = f"{hub.host}/dev1/?api-version=2019-10-01&DeviceClientType=outpost-compat-raw"
        connect = connect_packet("dev1", username, device_sas(hub.host, "dev1", key))
        pingreq = b"\xc0\x00"
        # CONNECT split across two messages, the second also carrying a PINGREQ and the first byte of another
        ws.send_frame(connect[:7])
        ws.send_frame(connect[7:] + pingreq + pingreq[:1])
        ws.send_frame(pingreq[1:])
        got = b""
        while len(got) < 8:
            got += ws.read_mqtt()
        assert got[:4] == b"\x20\x02\x00\x00", f"CONNACK accepted, got {got!r}"
        assert got[4:8] == b"\xd0\x00\xd0\x00", f"two PINGRESP, got {got!r}"
    finally:
        ws.close()


def test_a_garbage_websocket_message_closes_only_that_connection(hub, registry, clients):
    key = new_device(registry, "dev1")
    new_device(registry, "dev2")
    client = ws_client(clients, hub, "dev1", key)

    text = RawWebSocket(hub)
    garbage = RawWebSocket(hub)
    try:
        assert text.status == 101 and garbage.status == 101
        text.send_frame(b"CONNECT please", opcode=0x1)  # a text message: not MQTT
        garbage.send_frame(b"\xff" * 64)  # not a packet type MQTT knows
        assert text.closed_by_peer(), "a text message must close its connection"
        assert garbage.closed_by_peer(), "a garbage binary message must close its connection"
    finally:
        text.close()
        garbage.close()

    # the SDK's own WebSocket and the hub carry on
    monitor = Monitor(hub, count=1)
    try:
        run_with_timeout(lambda: client.send_message("still here"), 15, "send_message after the garbage")
        (received,) = monitor.messages()
    finally:
        monitor.close()
    assert monitor_body(received) == b"still here"
    raw = RawMqtt(hub)
    try:
        assert raw.connect("dev1", key) == 0, "port 8883 still serves"
    finally:
        raw.close()
    assert hub.alive()


def test_the_upgrade_needs_the_mqtt_subprotocol_and_other_routes_still_need_a_token(hub, registry):
    ws = RawWebSocket(hub, protocol=None)
    try:
        assert ws.status == 400, ws.headers
    finally:
        ws.close()
    ws = RawWebSocket(hub, protocol="amqp")
    try:
        assert ws.status == 400, ws.headers
    finally:
        ws.close()

    import requests

    response = requests.get(f"{hub.base_url}/devices?api-version=2021-04-12", verify=str(hub.ca_path), timeout=10)
    assert response.status_code == 401
    # a plain GET of the WebSocket path is not an upgrade: refused, and serves nothing
    response = requests.get(f"{hub.base_url}{PATH}", verify=str(hub.ca_path), timeout=10)
    assert 400 <= response.status_code < 500


def test_an_upgraded_connection_leaves_the_https_idle_and_header_timeouts(hub, registry, clients):
    hub.stop(timeout=5)
    hub.extra_args = ["--https-idle-timeout-secs", "1", "--https-header-timeout-secs", "1"]
    hub.start()
    key = new_device(registry, "dev1")
    client = ws_client(clients, hub, "dev1", key)
    time.sleep(3)  # well past both HTTPS timeouts; the MQTT keep-alive (60 s) is what applies now
    assert client.connected
    monitor = Monitor(hub, count=1)
    try:
        run_with_timeout(lambda: client.send_message("after the HTTPS timeouts"), 15, "send_message")
        (received,) = monitor.messages()
    finally:
        monitor.close()
    assert monitor_body(received) == b"after the HTTPS timeouts"


def test_an_x509_device_connects_over_websockets_with_its_certificate(hub, registry, tmp_path):
    """The certificate a device presents at the TLS handshake under the WebSocket reaches CONNECT, as on port 8883:
    its registered certificate connects with `websockets=True`, another certificate of the same name is refused."""
    from azure.iot.device import X509
    from azure.iot.device.exceptions import CredentialError

    from test_x509 import Certs, thumbprint

    certs = Certs(tmp_path / "certs")
    cert = certs.self_signed("ws-x509", "ws-x509")
    impostor = certs.self_signed("impostor", "ws-x509")
    registry.create_device_with_x509("ws-x509", thumbprint(cert), None, "enabled")
    created = []

    def open_client(pair):
        from azure.iot.device import IoTHubDeviceClient

        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(cert_file=str(pair[0]), key_file=str(pair[1])), hostname=hub.public_host,
            device_id="ws-x509", server_verification_cert=hub.ca_pem, connection_retry=False, websockets=True)
        created.append(client)
        return client

    try:
        client = open_client(cert)
        run_with_timeout(client.connect, 20, "X.509 connect over WebSocket")
        run_with_timeout(lambda: client.patch_twin_reported_properties({"via": "wss"}), 15, "patch reported")
        assert registry.get_twin("ws-x509").properties.reported["via"] == "wss"
        run_with_timeout(client.disconnect, 15, "disconnect")

        refused = open_client(impostor)
        with pytest.raises(CredentialError):
            run_with_timeout(refused.connect, 15, "X.509 connect over WebSocket that must be refused")
    finally:
        for client in created:
            try:
                run_with_timeout(client.shutdown, 10, "client shutdown")
            except Exception:  # noqa: BLE001 - a broken client must not hide the test's own result
                pass


def test_a_module_over_websockets_sends_to_an_output_and_gets_its_module_twin(hub, registry, clients):
    key = new_device(registry, "dev1")
    module_key = registry.create_module_with_sas("dev1", "wsmod", None, "", "").authentication.symmetric_key \
        .primary_key
    assert module_key != key
    client = clients.open(hub, "dev1", module_key, module_id="wsmod", websockets=True)

    # a message sent to an output arrives in `outpost monitor` as the module's
    monitor = Monitor(hub, count=1)
    try:
        run_with_timeout(lambda: client.send_message_to_output(Message("module over port 443"), "out1"), 15,
                         "send_message_to_output over WebSocket")
        (received,) = monitor.messages()
    finally:
        monitor.close()
    assert monitor_body(received) == b"module over port 443"
    assert (received["deviceId"], received["moduleId"]) == ("dev1", "wsmod")

    # the module twin's desired patch reaches it, and its twin holds what it reported
    patches = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)
    registry.update_module_twin("dev1", "wsmod", Twin(properties=TwinProperties(desired={"threshold": 3})), "*")
    assert patches.get(timeout=15)["threshold"] == 3
    run_with_timeout(lambda: client.patch_twin_reported_properties({"state": "ok"}), 15, "patch reported")
    twin = run_with_timeout(client.get_twin, 15, "get_twin over WebSocket")
    assert twin["desired"]["threshold"] == 3 and twin["reported"]["state"] == "ok"
    assert registry.get_module_twin("dev1", "wsmod").properties.reported["state"] == "ok"
