"""Several hub replicas on one PostgreSQL database behind HAProxy (issue 10, "How it is tested"): what one replica
does reaches a device held by another, one connection per identity across the hub, a replica's death loses
nothing acknowledged; and a bad `--database` is a clear error at start.

Devices here speak raw MQTT (harness.RawMqtt) so that a test can pick the replica a device connects to: the socket
goes to the replica's own address while the TLS name and the tokens stay the hub's public one (HAProxy's). The
service side picks a replica the same way (`ReplicatedHub.replica_session`).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from harness import (API_VERSION, MQTT_PORT, RawMqtt, ReplicatedHub, binary_has_database_flag, free_port,
                     outpost_bin, publish_packet, puback_packet)

pytestmark = pytest.mark.docker_free  # the outpost binary, PostgreSQL and HAProxy: no Docker

DESIRED = "$iothub/twin/PATCH/properties/desired/#"
METHODS = "$iothub/methods/POST/#"
TWIN_RES = "$iothub/twin/res/#"

@pytest.fixture
def rhub(hub_factory) -> ReplicatedHub:
    return hub_factory("hub", setup="replicas")


def create_device(hub, device_id: str) -> str:
    resp = hub.rest_session().put(f"{hub.base_url}/devices/{device_id}", params={"api-version": API_VERSION},
                                  json={"deviceId": device_id, "status": "enabled"}, timeout=15)
    assert resp.status_code == 200, f"PUT /devices/{device_id}: {resp.status_code} {resp.text}"
    return resp.json()["authentication"]["symmetricKey"]["primaryKey"]


def patch_desired(session, base_url: str, device_id: str, desired: dict) -> dict:
    resp = session.patch(f"{base_url}/twins/{device_id}", params={"api-version": API_VERSION},
                         json={"properties": {"desired": desired}}, headers={"If-Match": "*"}, timeout=15)
    assert resp.status_code == 200, f"PATCH /twins/{device_id}: {resp.status_code} {resp.text}"
    return resp.json()


def device(hub: ReplicatedHub, device_id: str, key: str, replica: int | None, *filters: str,
           clean: bool = False) -> RawMqtt:
    """A raw device connection to replica `replica` (None: through HAProxy), subscribed to `filters`."""
    raw = RawMqtt(hub, address=None if replica is None else hub.replicas[replica].host)
    assert raw.connect(device_id, key, clean=clean) == 0, f"CONNECT of {device_id} refused"
    if filters:
        assert all(code <= 1 for code in raw.subscribe(*filters)), f"SUBSCRIBE of {device_id} refused"
    return raw


def next_publish(raw: RawMqtt, prefix: str) -> tuple[str, bytes]:
    """The next PUBLISH whose topic starts with `prefix` (acknowledging QoS 1 ones); others are skipped."""
    while True:
        topic, qos, packet_id, _, payload = raw.next_publish()
        if qos and packet_id is not None:
            raw.send(puback_packet(packet_id))
        if topic.startswith(prefix):
            return topic, payload


def rid_of(topic: str) -> str:
    return topic.split("$rid=", 1)[1].split("&", 1)[0]


def test_patch_and_method_made_through_another_replica_reach_the_device(rhub):
    key = create_device(rhub, "dev1")
    raw = device(rhub, "dev1", key, 0, DESIRED, METHODS)
    try:
        # A desired patch made through replica 1 reaches the device held by replica 0.
        patch_desired(rhub.replica_session(1), rhub.replica_url(1), "dev1", {"colour": "green"})
        topic, payload = next_publish(raw, "$iothub/twin/PATCH/properties/desired/")
        assert json.loads(payload)["colour"] == "green"

        # A direct method invoked through replica 2 is answered by the device on replica 0.
        result: dict = {}

        def invoke() -> None:
            resp = rhub.replica_session(2).post(
                f"{rhub.replica_url(2)}/twins/dev1/methods", params={"api-version": API_VERSION},
                json={"methodName": "ping", "payload": {"n": 7}, "responseTimeoutInSeconds": 10}, timeout=30)
            result["resp"] = resp

        caller = threading.Thread(target=invoke, daemon=True)
        caller.start()
        topic, payload = next_publish(raw, "$iothub/methods/POST/ping/")
        assert json.loads(payload) == {"n": 7}
        raw.send(publish_packet(f"$iothub/methods/res/200/?$rid={rid_of(topic)}", b'{"pong": 7}', qos=0))
        caller.join(30)
        resp = result.get("resp")
        assert resp is not None, "the method call through replica 2 did not return"
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"status": 200, "payload": {"pong": 7}}
    finally:
        raw.close()


def test_second_connection_through_another_replica_closes_the_first(rhub):
    key = create_device(rhub, "dev1")
    first = device(rhub, "dev1", key, 0, DESIRED)
    second = device(rhub, "dev1", key, 2, DESIRED)
    try:
        assert first.closed_by_peer(10), "the connection on replica 0 stayed open after the same identity " \
                                         "connected through replica 2"
        # The second one is the device now: a patch made through replica 1 reaches it.
        patch_desired(rhub.replica_session(1), rhub.replica_url(1), "dev1", {"owner": "second"})
        _, payload = next_publish(second, "$iothub/twin/PATCH/properties/desired/")
        assert json.loads(payload)["owner"] == "second"
    finally:
        first.close()
        second.close()


def test_sigkill_of_a_replica_holding_100_devices_loses_nothing_acknowledged(rhub):
    count = 100
    ids = [f"fleet-{i:03d}" for i in range(count)]
    keys = {d: create_device(rhub, d) for d in ids}

    # All 100 on replica 0, each with a reported patch acknowledged (204) before the kill.
    conns = {}
    for i, d in enumerate(ids):
        raw = device(rhub, d, keys[d], 0, DESIRED, TWIN_RES)
        raw.send(publish_packet("$iothub/twin/PATCH/properties/reported/?$rid=r1",
                                json.dumps({"before": i}).encode(), qos=0))
        topic, _ = next_publish(raw, "$iothub/twin/res/")
        assert topic.startswith("$iothub/twin/res/204/"), f"{d}: reported patch answered {topic}"
        conns[d] = raw

    rhub.replicas[0].kill()
    for raw in conns.values():
        raw.close()

    # Patches made (and acknowledged) while the devices move, through HAProxy (the surviving replicas).
    session = rhub.rest_session()
    for i, d in enumerate(ids):
        patch_desired(session, rhub.base_url, d, {"moved": i})

    # Every device reconnects through HAProxy and finds both its acknowledged reported patch and the patches made
    # while it moved (a twin GET, as the SDKs do after a reconnect).
    conns = {}
    try:
        for i, d in enumerate(ids):
            deadline = time.monotonic() + 15
            while True:
                try:
                    raw = device(rhub, d, keys[d], None, DESIRED, TWIN_RES)
                    break
                except (OSError, AssertionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            conns[d] = raw
            raw.send(publish_packet("$iothub/twin/GET/?$rid=g1", b"", qos=0))
            topic, payload = next_publish(raw, "$iothub/twin/res/")
            assert topic.startswith("$iothub/twin/res/200/"), f"{d}: twin GET answered {topic}"
            twin = json.loads(payload)
            assert twin["desired"].get("moved") == i, f"{d}: patch made while it moved is missing: {twin}"
            assert twin["reported"].get("before") == i, f"{d}: acknowledged reported patch lost: {twin}"

        # And they are live again: a patch made now (through whichever replica) reaches each of them.
        for i, d in enumerate(ids):
            patch_desired(session, rhub.base_url, d, {"after": i})
        for i, d in enumerate(ids):
            _, payload = next_publish(conns[d], "$iothub/twin/PATCH/properties/desired/")
            assert json.loads(payload)["after"] == i, d
    finally:
        for raw in conns.values():
            raw.close()


# --------------------------------------------------------------------------------------------------
# a bad --database


def serve_with_database(tmp_path, loopback, url: str, timeout: float = 20) -> tuple[subprocess.CompletedProcess,
                                                                                     float]:
    host = loopback.next()
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        cp = subprocess.run([str(outpost_bin()), "hub", "serve", "--data-dir", str(data_dir), "--hostname", host,
                             "--bind", host, "--mqtt-port", str(MQTT_PORT), "--https-port", str(free_port(host)),
                             "--database", url], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"`hub serve --database {url}` still running after {timeout} s (a hang, not an "
                             f"error): stdout={e.stdout!r} stderr={e.stderr!r}") from None
    return cp, time.monotonic() - started


@pytest.fixture
def needs_database_flag(binary):
    if not binary_has_database_flag(binary):
        pytest.skip(f"{binary} has no `hub serve --database` (PostgreSQL engine not in this build)")


def test_unreachable_database_is_a_clear_error_at_start(tmp_path, loopback, needs_database_flag):
    port = free_port("127.0.0.1")  # nothing listens there
    cp, elapsed = serve_with_database(tmp_path, loopback, f"postgres://outpost@127.0.0.1:{port}/outpost")
    output = cp.stdout + cp.stderr
    assert cp.returncode != 0, f"hub serve on an unreachable database exited 0: {output}"
    assert elapsed < 12, f"hub serve took {elapsed:.1f} s to give up on an unreachable database"
    assert "database" in output.lower() and f"127.0.0.1:{port}" in output, \
        f"the error does not name the database: {output!r}"


@pytest.mark.parametrize("wrong", ["database", "user"])
def test_wrong_database_is_a_clear_error_at_start(tmp_path, loopback, needs_database_flag, postgres, wrong):
    url = postgres.url("no_such_database") if wrong == "database" else \
        postgres.url().replace("outpost@", "no_such_user@")
    cp, elapsed = serve_with_database(tmp_path, loopback, url)
    output = cp.stdout + cp.stderr
    assert cp.returncode != 0, f"hub serve on {url} exited 0: {output}"
    assert elapsed < 12, f"hub serve took {elapsed:.1f} s to give up on {url}"
    assert f"no_such_{wrong}" in output, f"the error does not name the {wrong}: {output!r}"


@pytest.mark.parametrize("url", ["mysql://outpost@127.0.0.1/outpost", "not a url"])
def test_malformed_database_url_is_a_clear_error_at_start(tmp_path, loopback, needs_database_flag, url):
    cp, elapsed = serve_with_database(tmp_path, loopback, url)
    output = cp.stdout + cp.stderr
    assert cp.returncode != 0, f"hub serve --database {url!r} exited 0: {output}"
    assert elapsed < 12
    assert "database" in output.lower(), f"the error does not mention the database: {output!r}"
