"""Bad input gets a clear refusal and changes nothing; a bad connection is closed without disturbing others."""

from __future__ import annotations

import queue
import socket
import time

import pytest
import requests

from harness import (
    API_VERSION, MQTT_PORT, PUBACK, SUBACK, RawMqtt, connect_packet, packet, publish_packet, run_with_timeout,
    service_sas, set_handler, subscribe_packet,
)

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    # SQLite and PostgreSQL; not the replicas (storage and validation, no delivery between replicas: kept out
    # to hold the run time down, see README.md)
    pytest.mark.hub_setups("sqlite", "postgres"),
]

# ---------------------------------------------------------------------------------------------------
# REST


def url(hub, path, api_version=API_VERSION):
    return f"{hub.base_url}{path}" + (f"?api-version={api_version}" if api_version else "")


def assert_json_error(resp, status):
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text!r}"
    try:
        body = resp.json()
    except ValueError:
        pytest.fail(f"error body is not JSON: {resp.text!r}")
    assert isinstance(body, dict) and body.get("Message"), f"IoT Hub error bodies carry Message: {body!r}"


def test_malformed_json_body_is_400_and_creates_nothing(hub):
    s = hub.rest_session()
    resp = s.put(url(hub, "/devices/x"), data=b'{"deviceId": "x", "authentication": ',
                 headers={"Content-Type": "application/json; charset=utf-8"}, timeout=10)
    assert_json_error(resp, 400)
    assert s.get(url(hub, "/devices/x"), timeout=10).status_code == 404


def test_body_of_the_wrong_shape_is_400(hub):
    s = hub.rest_session()
    resp = s.put(url(hub, "/devices/x"), json=["not", "an", "object"], timeout=10)
    assert_json_error(resp, 400)
    resp = s.patch(url(hub, "/twins/x"), json={"properties": {"desired": "not an object"}}, timeout=10)
    assert resp.status_code in (400, 404)
    assert s.get(url(hub, "/devices/x"), timeout=10).status_code == 404


def test_device_id_in_body_must_match_the_path(hub):
    s = hub.rest_session()
    resp = s.put(url(hub, "/devices/x"), json={"deviceId": "y", "authentication": {"type": "sas"}}, timeout=10)
    assert_json_error(resp, 400)
    assert s.get(url(hub, "/devices/x"), timeout=10).status_code == 404
    assert s.get(url(hub, "/devices/y"), timeout=10).status_code == 404


def test_unknown_api_version_is_400(hub):
    s = hub.rest_session()
    resp = s.get(url(hub, "/devices/x", api_version="1999-01-01"), timeout=10)
    assert_json_error(resp, 400)
    resp = s.put(url(hub, "/devices/x", api_version="not-a-version"), json={"deviceId": "x"}, timeout=10)
    assert resp.status_code == 400
    # a fresh session: keep-alive after an early refusal is the next test's subject
    assert hub.rest_session().get(url(hub, "/devices/x"), timeout=10).status_code == 404


def test_missing_api_version_is_400(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    assert_json_error(hub.rest_session().get(url(hub, "/devices/dev1", api_version=None), timeout=10), 400)


def test_request_refused_before_its_body_is_read_still_gets_its_answer(hub):
    # A request refused early (here: by the api-version check, before the body is read) must still get its 400,
    # and leave the keep-alive connection usable or say `Connection: close`: requests/msrest reuse connections.
    s = hub.rest_session()
    lost, broken = 0, 0
    for _ in range(20):
        try:
            resp = s.put(url(hub, "/devices/x", api_version="not-a-version"),
                         json={"deviceId": "x", "pad": "p" * 60_000}, timeout=10)
        except requests.ConnectionError:
            lost += 1
            continue
        assert resp.status_code == 400
        try:
            s.get(url(hub, "/devices/x"), timeout=10)
        except requests.ConnectionError:
            if resp.headers.get("connection", "").lower() != "close":
                broken += 1
    assert (lost, broken) == (0, 0), (
        f"of 20 PUTs with a 60 KB body and an unknown api-version, {lost} got no answer (connection reset while "
        f"sending) and {broken} broke the next request on the same connection")


def test_requests_without_valid_service_token_are_401(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    fields = dict(p.split("=", 1) for p in hub.connection_string.split(";"))
    host, policy, key = fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"]
    wrong_key = "c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M="
    tokens = {
        "none": None,
        "garbage": "Bearer nonsense",
        "wrong key": service_sas(host, policy, wrong_key),
        "expired": service_sas(host, policy, key, expiry=int(time.time()) - 3600),
        "unknown policy": service_sas(host, "nobody", key),
    }
    for what, token in tokens.items():
        headers = {"Authorization": token} if token else {}
        resp = requests.get(url(hub, "/devices/dev1"), headers=headers, verify=str(hub.ca_path), timeout=10)
        assert resp.status_code == 401, f"{what}: expected 401, got {resp.status_code}"
        resp = requests.delete(url(hub, "/devices/dev1"), headers={**headers, "If-Match": '"*"'},
                               verify=str(hub.ca_path), timeout=10)
        assert resp.status_code == 401, f"{what}: DELETE expected 401, got {resp.status_code}"
    # the hand-made token is right when its key is: this proves the refusals above are about the token
    ok = requests.get(url(hub, "/devices/dev1"), headers={"Authorization": service_sas(host, policy, key)},
                      verify=str(hub.ca_path), timeout=10)
    assert ok.status_code == 200
    assert registry.get_device("dev1").device_id == "dev1"


def test_device_token_does_not_grant_service_access(hub, registry):
    from harness import device_sas

    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    token = device_sas(hub.host, "dev1", key)
    resp = requests.get(url(hub, "/devices/dev1"), headers={"Authorization": token}, verify=str(hub.ca_path),
                        timeout=10)
    assert resp.status_code == 401


def test_unknown_route_is_404(hub):
    resp = hub.rest_session().get(url(hub, "/no/such/thing"), timeout=10)
    assert resp.status_code == 404


# ---------------------------------------------------------------------------------------------------
# MQTT: a bad connection is closed, the others carry on


@pytest.fixture
def live_device(hub, registry, clients):
    """A real SDK client that is connected before the bad input and must keep working after it."""
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    registry.create_device_with_sas("raw1", "", "", "enabled")
    client = clients.open(hub, "dev1", key)
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)
    return client, patches


def assert_still_works(hub, registry, live_device):
    from azure.iot.hub.models import Twin, TwinProperties

    client, patches = live_device
    assert hub.alive(), "the hub process died"
    assert client.connected
    run_with_timeout(lambda: client.patch_twin_reported_properties({"alive": True}), 15, "reported patch")
    assert registry.get_twin("dev1").properties.reported["alive"] is True
    registry.update_twin("dev1", Twin(properties=TwinProperties(desired={"still": "here"})), "*")
    assert patches.get(timeout=10)["still"] == "here"


def raw_key(registry):
    return registry.get_device("raw1").authentication.symmetric_key.primary_key


def test_garbage_bytes_close_the_connection(hub, registry, live_device):
    raw = RawMqtt(hub)
    raw.send(b"\xf0\x05garbage-that-is-not-mqtt" * 4)
    assert raw.closed_by_peer(10), "the hub kept a connection open after garbage"
    raw.close()
    assert_still_works(hub, registry, live_device)


def test_plaintext_on_the_tls_port_is_closed(hub, registry, live_device):
    sock = socket.create_connection((hub.host, MQTT_PORT), timeout=10)
    try:
        sock.sendall(connect_packet("raw1", "x", "y"))
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout) as e:
            assert not isinstance(e, socket.timeout), "the hub kept a non-TLS connection open"
    finally:
        sock.close()
    assert_still_works(hub, registry, live_device)


def test_connect_with_inconsistent_lengths_is_closed(hub, registry, live_device):
    raw = RawMqtt(hub)
    # protocol name, level, flags, keepalive, then a client id whose length prefix claims 200 bytes
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + b"\x00\xc8raw1"
    raw.send(packet(1, 0, body))
    assert raw.closed_by_peer(10), "the hub kept a connection open after a malformed CONNECT"
    raw.close()
    assert_still_works(hub, registry, live_device)


def test_connect_cut_short_by_end_of_stream_is_closed(hub, registry, live_device):
    raw = RawMqtt(hub)
    full = connect_packet("raw1", f"{hub.host}/raw1/?api-version=2021-04-12", "x" * 100)
    raw.send(full[: len(full) // 2])
    # half-close our side: the hub reads end of stream in the middle of a packet and must close too
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.closed_by_peer(10), "the hub kept a connection open after end of stream mid-CONNECT"
    raw.close()
    assert_still_works(hub, registry, live_device)


def test_truncated_connect_alone_does_not_disturb_others(hub, registry, live_device):
    raw = RawMqtt(hub)
    full = connect_packet("raw1", f"{hub.host}/raw1/?api-version=2021-04-12", "x" * 100)
    raw.send(full[:10])
    assert_still_works(hub, registry, live_device)
    raw.close()


def test_wrong_protocol_level_is_refused(hub, registry, live_device):
    raw = RawMqtt(hub)
    body = b"\x00\x04MQTT\x05\x02\x00\x3c" + b"\x00\x04raw1"  # level 5 (MQTT 5)
    raw.send(packet(1, 0, body))
    pkt = raw.read_packet()
    # [MQTT-3.1.2-2]: CONNACK rc 1 then close (closing at once is acceptable too)
    if pkt is not None:
        assert pkt[0] == 2 and pkt[2][1] != 0
    assert raw.closed_by_peer(10)
    raw.close()
    assert_still_works(hub, registry, live_device)


def test_publish_over_256kb_closes_the_connection(hub, registry, live_device):
    raw = RawMqtt(hub)
    assert raw.connect("raw1", raw_key(registry)) == 0
    topic = "devices/raw1/messages/events/"
    # a large message under the limit is accepted: the refusal below is about size, not the client
    raw.send(publish_packet(topic, b"a" * (200 * 1024), packet_id=1))
    pkt = raw.read_packet()
    assert pkt is not None and pkt[0] == PUBACK, f"expected PUBACK for a 200 KB message, got {pkt}"
    raw.send(publish_packet(topic, b"b" * (256 * 1024 + 4096), packet_id=2))
    assert raw.closed_by_peer(10), "the hub kept a connection open after a publish over 256 KB"
    raw.close()
    assert_still_works(hub, registry, live_device)


def test_publish_to_unknown_topic_closes_the_connection(hub, registry, live_device):
    raw = RawMqtt(hub)
    assert raw.connect("raw1", raw_key(registry)) == 0
    raw.send(publish_packet("devices/raw1/messages/events/", b"ok", packet_id=1))
    pkt = raw.read_packet()
    assert pkt is not None and pkt[0] == PUBACK
    raw.send(publish_packet("not/an/iothub/topic", b"x", packet_id=2))
    assert raw.closed_by_peer(10), "the hub kept a connection open after a publish to an unknown topic"
    raw.close()
    assert_still_works(hub, registry, live_device)


def test_publish_as_another_device_closes_the_connection(hub, registry, live_device):
    raw = RawMqtt(hub)
    assert raw.connect("raw1", raw_key(registry)) == 0
    raw.send(publish_packet("devices/dev1/messages/events/", b"spoofed", packet_id=1))
    assert raw.closed_by_peer(10), "a device must not publish on another device's topic"
    raw.close()
    assert_still_works(hub, registry, live_device)


def test_qos2_publish_closes_the_connection(hub, registry, live_device):
    raw = RawMqtt(hub)
    assert raw.connect("raw1", raw_key(registry)) == 0
    raw.send(publish_packet("devices/raw1/messages/events/", b"x", qos=2, packet_id=1))
    assert raw.closed_by_peer(10), "IoT Hub closes the connection on a QoS 2 publish"
    raw.close()
    assert_still_works(hub, registry, live_device)


def test_subscribe_is_granted_at_most_qos1(hub, registry, live_device):
    raw = RawMqtt(hub)
    assert raw.connect("raw1", raw_key(registry)) == 0
    raw.send(subscribe_packet(7, [("devices/raw1/messages/devicebound/#", 2)]))
    pkt = raw.read_packet()
    assert pkt is not None and pkt[0] == SUBACK
    assert pkt[2][:2] == b"\x00\x07"
    assert pkt[2][2] in (0, 1), f"granted QoS {pkt[2][2]}"
    raw.close()


def test_many_bad_connections_leave_the_hub_serving(hub, registry, live_device):
    for i in range(20):
        raw = RawMqtt(hub)
        raw.send(bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]))  # remaining length > 4 bytes: malformed
        assert raw.closed_by_peer(5), f"connection {i} with a malformed length was kept open"
        raw.close()
    assert_still_works(hub, registry, live_device)


def test_publish_before_connect_closes_the_connection(hub, registry, live_device):
    raw = RawMqtt(hub)
    raw.send(b"\x30\x02\x00")  # a PUBLISH before CONNECT
    assert raw.closed_by_peer(10), "[MQTT-3.1.0-1] the first packet must be CONNECT"
    raw.close()
    assert_still_works(hub, registry, live_device)
