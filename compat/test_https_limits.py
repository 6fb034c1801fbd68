"""The hub's HTTPS listener under hostile clients (issue 9, item 4), through `outpost hub serve`: a client that
sends half a header is closed after the header timeout, an unauthenticated request is refused 401 before its
body is read, connections past the cap wait to be accepted, and the edge upstream link's batches have their own,
larger body limit.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time

import pytest

from harness import API_VERSION, Hub, connection_string_fields, device_sas, free_port, service_sas


def start_hub(loopback, tmp_path, request, *extra_args: str) -> Hub:
    host = loopback.next()
    data_dir = tmp_path / "hub-data"
    data_dir.mkdir()
    hub = Hub(data_dir, host, free_port(host), tmp_path / "hub.log")
    hub.extra_args = list(extra_args)
    request.node._outpost_hubs = [hub]
    hub.start()
    return hub


@pytest.fixture
def limited_hub(loopback, tmp_path, request):
    """A hub with a header timeout of 1 s."""
    hub = start_hub(loopback, tmp_path, request, "--https-header-timeout-secs", "1")
    yield hub
    hub.stop(timeout=5)


@pytest.fixture
def capped_hub(loopback, tmp_path, request):
    """A hub that serves three HTTPS connections at once (header timeout left at 10 s)."""
    hub = start_hub(loopback, tmp_path, request, "--https-max-connections", "3")
    yield hub
    hub.stop(timeout=5)


def tls_connect(hub: Hub, timeout: float = 5.0) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(hub.ca_path))
    raw = socket.create_connection((hub.host, hub.https_port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname=hub.host)


def read_until_closed(sock: ssl.SSLSocket, timeout: float) -> tuple[bytes, bool]:
    """Reads what arrives within `timeout`; returns (data, whether the server closed the connection)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        return data, True
    except (ConnectionResetError, ssl.SSLError):
        return data, True
    except (TimeoutError, socket.timeout):
        return data, False


def read_response_head(sock: ssl.SSLSocket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def owner_token(hub: Hub) -> str:
    fields = connection_string_fields(hub.connection_string)
    return service_sas(fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"])


def test_a_client_that_sends_half_a_header_is_closed_after_the_header_timeout(limited_hub):
    sock = tls_connect(limited_hub)
    started = time.monotonic()
    sock.sendall(f"GET /devices?api-version={API_VERSION} HTTP/1.1\r\nHost: {limited_hub.host}\r\n".encode())
    data, closed = read_until_closed(sock, timeout=6)
    sock.close()
    assert closed, "the connection with half a header was still open after 6 s (header timeout 1 s)"
    assert time.monotonic() - started < 5
    assert b"200 OK" not in data


def test_an_unauthenticated_large_post_is_refused_before_its_body_is_sent(limited_hub):
    sock = tls_connect(limited_hub)
    # Only the headers: a server that reads the body first never answers.
    sock.sendall((f"PUT /devices/victim?api-version={API_VERSION} HTTP/1.1\r\nHost: {limited_hub.host}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n").encode())
    try:
        head = read_response_head(sock, timeout=5)
    except (TimeoutError, socket.timeout):
        pytest.fail("no answer to an unauthenticated request until its 2 MB body arrives")
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 401"), head
    assert b"iothub-errorcode: iothubunauthorizedaccess" in head.lower(), head

    # A forged token is no better than none.
    sock = tls_connect(limited_hub)
    forged = device_sas(limited_hub.host, "victim", base64.b64encode(b"k" * 32).decode())
    sock.sendall((f"POST /twins/victim/methods?api-version={API_VERSION} HTTP/1.1\r\nHost: {limited_hub.host}\r\n"
                  f"Authorization: {forged}\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n").encode())
    head = read_response_head(sock, timeout=5)
    sock.close()
    assert head.startswith(b"HTTP/1.1 401"), head


def test_connections_past_the_cap_wait_until_one_closes(capped_hub):
    limited_hub = capped_hub
    held = [tls_connect(limited_hub) for _ in range(3)]
    raw = socket.create_connection((limited_hub.host, limited_hub.https_port), timeout=5)
    context = ssl.create_default_context(cafile=str(limited_hub.ca_path))
    raw.settimeout(2)
    with pytest.raises((TimeoutError, socket.timeout)):
        context.wrap_socket(raw, server_hostname=limited_hub.host)  # the 4th is not served while 3 are open
    raw.close()
    held.pop().close()
    fourth = tls_connect(limited_hub, timeout=5)
    token = owner_token(limited_hub)
    fourth.sendall((f"GET /devices?api-version={API_VERSION} HTTP/1.1\r\nHost: {limited_hub.host}\r\n"
                    f"Authorization: {token}\r\nConnection: close\r\n\r\n").encode())
    assert read_response_head(fourth, timeout=5).startswith(b"HTTP/1.1 200")
    for sock in [*held, fourth]:
        sock.close()


def post(hub: Hub, path: str, token: str, body: bytes, method: str = "POST") -> int:
    sock = tls_connect(hub, timeout=30)
    separator = "&" if "?" in path else "?"
    sock.sendall((f"{method} {path}{separator}api-version={API_VERSION} HTTP/1.1\r\nHost: {hub.host}\r\n"
                  f"Authorization: {token}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
    try:
        sock.sendall(body)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    head = read_response_head(sock, timeout=30)
    sock.close()
    return int(head.split()[1])


def test_an_edge_batch_larger_than_the_general_limit_is_accepted_on_edge_routes_only(limited_hub):
    hub = limited_hub
    created = hub.cli_json("device", "create", "edge-big", "--edge")
    key = created["authentication"]["symmetricKey"]["primaryKey"]
    token = device_sas(hub.host, "edge-big", key)
    message = {"bodyBase64": base64.b64encode(b"x" * 150_000).decode(), "system": {}, "properties": {}}
    batch = json.dumps({"messages": [{"client": "edge-big", "message": message}] * 20}).encode()
    assert 2 * 1024 * 1024 < len(batch) < 16 * 1024 * 1024
    # The link names its version (`outpost_core::edge_link::LINK_API_VERSION`) beside IoT Hub's api-version.
    assert post(hub, "/edge/edge-big/messages?link-version=2026-12-01", token, batch) == 200
    # The service routes keep the general limit (2 MiB).
    padding = json.dumps({"deviceId": "big", "tags": {"x": "y" * (3 * 1024 * 1024)}}).encode()
    assert post(hub, "/devices/big", owner_token(hub), padding, method="PUT") == 413
