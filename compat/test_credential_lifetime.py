"""A session does not outlive the credentials it was opened with (issue 9, item 7).

A connection whose SAS token expires is closed at expiry (plus the five minutes of clock skew the hub allows
when it checks a token); rotating an identity's keys or deleting it closes its live connections, at the hub
and at an edge hub, and the old key no longer connects.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from types import SimpleNamespace

from harness import PINGREQ, RawMqtt, device_sas, wait_for
from test_edge_hub import deploy, edge_manifest

MAX_CLOCK_SKEW_SECS = 300


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def closed_within(raw: RawMqtt, seconds: float) -> bool:
    """Pings until the server closes the connection; False if it is still open after `seconds`."""
    raw.sock.settimeout(2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            raw.send(bytes([PINGREQ << 4, 0]))
            if raw.read_packet() is None:
                return True
        except OSError:
            return True
        time.sleep(0.5)
    return False


def test_a_connection_closes_when_its_token_expires(hub, registry):
    key = registry.create_device_with_sas("shortlived", "", "", "enabled").authentication.symmetric_key.primary_key
    # Still accepted for three seconds: its expiry lies within the allowed clock skew.
    expiry = int(time.time()) + 3 - MAX_CLOCK_SKEW_SECS
    raw = RawMqtt(hub)
    assert raw.connect("shortlived", key, token=device_sas(hub.host, "shortlived", key, expiry=expiry)) == 0
    assert closed_within(raw, 20), "the connection outlived its token"


def test_rotating_a_devices_key_closes_its_connection_and_the_old_key_is_refused(hub, registry):
    old = registry.create_device_with_sas("rotated", "", "", "enabled").authentication.symmetric_key.primary_key
    raw = RawMqtt(hub)
    assert raw.connect("rotated", old) == 0
    registry.update_device_with_sas("rotated", "*", new_key(), new_key(), "enabled")
    assert closed_within(raw, 10), "the connection outlived its key"
    again = RawMqtt(hub)
    assert again.connect("rotated", old) != 0, "the old key still connects"


def test_an_update_that_keeps_the_keys_keeps_the_connection(hub, registry):
    device = registry.create_device_with_sas("kept", "", "", "enabled")
    keys = device.authentication.symmetric_key
    raw = RawMqtt(hub)
    assert raw.connect("kept", keys.primary_key) == 0
    registry.update_device_with_sas("kept", "*", keys.primary_key, keys.secondary_key, "enabled")
    assert not closed_within(raw, 3), "an update that changed no key closed the connection"


def test_deleting_a_module_closes_its_connection(hub, registry):
    registry.create_device_with_sas("host", "", "", "enabled")
    key = registry.create_module_with_sas("host", "gone", None, "", "").authentication.symmetric_key.primary_key
    raw = RawMqtt(hub)
    assert raw.connect("host", key, module_id="gone") == 0
    registry.delete_module("host", "gone")
    assert closed_within(raw, 10), "the connection outlived its module"


def test_rotating_a_leafs_key_closes_its_connection_at_the_edge_hub(hub, edge, tmp_path):
    deploy(hub, edge.device_id, edge_manifest({}), tmp_path)
    edge.start()
    edge.wait_online()
    leaf = hub.cli_json("device", "create", f"leaf-{uuid.uuid4().hex[:4]}", "--parent", edge.device_id)
    leaf_id, old = leaf["deviceId"], leaf["authentication"]["symmetricKey"]["primaryKey"]
    target = SimpleNamespace(host=edge.host, ca_path=edge.ca_path)
    raw = RawMqtt(target)
    assert raw.connect(leaf_id, old, token=device_sas(hub.host, leaf_id, old)) == 0
    registry = hub.registry()
    wait_for(lambda: registry.get_device(leaf_id).connection_state == "Connected", 30,
             "the edge to report the leaf connected")

    registry.update_device_with_sas(leaf_id, "*", new_key(), new_key(), "enabled")
    assert closed_within(raw, 20), "the edge hub kept a connection whose key was rotated at the hub"
    again = RawMqtt(target)
    assert again.connect(leaf_id, old, token=device_sas(hub.host, leaf_id, old)) != 0, \
        "the edge hub still accepts the old key"


def _edge_target(edge) -> SimpleNamespace:
    return SimpleNamespace(host=edge.host, ca_path=edge.ca_path)


def _connected_at_the_hub(hub, device_id: str, module_id: str | None = None) -> None:
    registry = hub.registry()

    def connected():
        twin = registry.get_module(device_id, module_id) if module_id else registry.get_device(device_id)
        return twin.connection_state == "Connected"

    wait_for(connected, 30, f"the edge to report {device_id}{'/' + module_id if module_id else ''} connected")


def test_deleting_a_module_closes_its_connection_at_the_edge_hub(hub, edge, tmp_path):
    deploy(hub, edge.device_id, edge_manifest({}), tmp_path)
    edge.start()
    edge.wait_online()
    module = hub.cli_json("module", "create", edge.device_id, "doomed")
    key = module["authentication"]["symmetricKey"]["primaryKey"]
    token = device_sas(hub.host, edge.device_id, key, module_id="doomed")
    raw = RawMqtt(_edge_target(edge))
    assert raw.connect(edge.device_id, key, module_id="doomed", token=token) == 0
    _connected_at_the_hub(hub, edge.device_id, "doomed")

    hub.registry().delete_module(edge.device_id, "doomed")
    assert closed_within(raw, 20), "the edge hub kept the connection of a module deleted at the hub"
    again = RawMqtt(_edge_target(edge))
    assert again.connect(edge.device_id, key, module_id="doomed", token=token) != 0, \
        "the edge hub still accepts the deleted module"


def test_deleting_a_leaf_device_closes_its_connection_at_the_edge_hub(hub, edge, tmp_path):
    deploy(hub, edge.device_id, edge_manifest({}), tmp_path)
    edge.start()
    edge.wait_online()
    leaf = hub.cli_json("device", "create", f"leaf-{uuid.uuid4().hex[:4]}", "--parent", edge.device_id)
    leaf_id, key = leaf["deviceId"], leaf["authentication"]["symmetricKey"]["primaryKey"]
    raw = RawMqtt(_edge_target(edge))
    assert raw.connect(leaf_id, key, token=device_sas(hub.host, leaf_id, key)) == 0
    _connected_at_the_hub(hub, leaf_id)

    hub.registry().delete_device(leaf_id)
    assert closed_within(raw, 20), "the edge hub kept the connection of a device deleted at the hub"
    again = RawMqtt(_edge_target(edge))
    assert again.connect(leaf_id, key, token=device_sas(hub.host, leaf_id, key)) != 0, \
        "the edge hub still accepts the deleted device"


def test_a_connection_closes_when_its_token_expires_at_the_edge_hub(hub, edge, tmp_path):
    deploy(hub, edge.device_id, edge_manifest({}), tmp_path)
    edge.start()
    edge.wait_online()
    leaf = hub.cli_json("device", "create", f"leaf-{uuid.uuid4().hex[:4]}", "--parent", edge.device_id)
    leaf_id, key = leaf["deviceId"], leaf["authentication"]["symmetricKey"]["primaryKey"]
    # Still accepted for four seconds: its expiry lies within the allowed clock skew.
    expiry = int(time.time()) + 4 - MAX_CLOCK_SKEW_SECS
    raw = RawMqtt(_edge_target(edge))
    assert raw.connect(leaf_id, key, token=device_sas(hub.host, leaf_id, key, expiry=expiry)) == 0
    started = time.monotonic()
    assert closed_within(raw, 20), "the edge hub kept a connection whose token expired"
    assert time.monotonic() - started >= 2, "closed long before the token expired"
