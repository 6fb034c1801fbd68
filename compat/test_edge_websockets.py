"""MQTT over WebSocket through the edge hub (issue 15): a device behind an edge device, with the unmodified SDK's
`websockets=True`, dials wss://{GatewayHostName}:443/$iothub/websocket, and the edge hub's HTTPS port upgrades it
and serves the same MQTT head as the edge hub's port 8883.

The edge harness gives each edge device its own loopback address and leaves `edge_https_port` at its default,
443: the port the SDK dials. Process modules only: no Docker."""

from __future__ import annotations

import queue
import uuid

import pytest
from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, Message
from azure.iot.hub.models import Twin, TwinProperties

from harness import Monitor, monitor_body, port_open, run_with_timeout, set_handler, wait_for
from test_edge_hub import deploy, edge_manifest
from test_websockets import RawWebSocket

pytestmark = pytest.mark.docker_free


def started(hub, edge, tmp_path, routes: dict | None = None):
    deploy(hub, edge.device_id, edge_manifest({}, routes=routes), tmp_path)
    edge.start()
    wait_for(lambda: port_open(edge.host, 443), 10, "the edge hub's HTTPS port 443")


def test_a_device_behind_the_edge_over_websockets_sends_telemetry_and_gets_desired_patches(hub, edge, tmp_path,
                                                                                           clients):
    started(hub, edge, tmp_path)
    leaf_id = f"wsleaf-{uuid.uuid4().hex[:4]}"
    leaf = hub.cli_json("device", "create", leaf_id, "--parent", edge.device_id)
    key = leaf["authentication"]["symmetricKey"]["primaryKey"]
    cs = f"HostName={hub.host};DeviceId={leaf_id};SharedAccessKey={key};GatewayHostName={edge.host}"
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=edge.ca_path.read_text(),
                                                              websockets=True, connection_retry=False)
    clients.created.append(client)
    run_with_timeout(client.connect, 30, "connect to the edge hub over WebSocket")

    # telemetry reaches the hub through the edge
    monitor = Monitor(hub, count=1, timeout=60)
    try:
        message = Message("behind the edge, over port 443")
        message.custom_properties["via"] = "edge-websocket"
        run_with_timeout(lambda: client.send_message(message), 15, "send_message over WebSocket to the edge")
        (received,) = monitor.messages()
    finally:
        monitor.close()
    assert monitor_body(received) == b"behind the edge, over port 443"
    assert received["deviceId"] == leaf_id and received["moduleId"] is None
    assert received["properties"]["via"] == "edge-websocket"

    # a desired patch made at the hub reaches the device through the edge
    patches = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)
    hub.registry().update_twin(leaf_id, Twin(properties=TwinProperties(desired={"interval": 9})), "*")
    patch = patches.get(timeout=30)
    assert patch["interval"] == 9


def test_a_module_of_the_edge_device_over_websockets_routes_upstream_and_gets_its_twin(hub, edge, tmp_path,
                                                                                     clients):
    started(hub, edge, tmp_path, routes={"up": "FROM /messages/modules/wsmod/outputs/* INTO $upstream"})
    edge.wait_online()
    module = hub.cli_json("module", "create", edge.device_id, "wsmod")
    key = module["authentication"]["symmetricKey"]["primaryKey"]
    cs = (f"HostName={hub.host};DeviceId={edge.device_id};ModuleId=wsmod;SharedAccessKey={key};"
          f"GatewayHostName={edge.host}")
    client = IoTHubModuleClient.create_from_connection_string(cs, server_verification_cert=edge.ca_path.read_text(),
                                                              websockets=True, connection_retry=False)
    clients.created.append(client)
    run_with_timeout(client.connect, 30, "connect a module to the edge hub over WebSocket")

    # a message to an output takes the edge's route to the hub
    monitor = Monitor(hub, count=1, timeout=60)
    try:
        run_with_timeout(lambda: client.send_message_to_output(Message("module behind the edge"), "out1"), 15,
                         "send_message_to_output over WebSocket to the edge")
        (received,) = monitor.messages()
    finally:
        monitor.close()
    assert monitor_body(received) == b"module behind the edge"
    assert (received["deviceId"], received["moduleId"]) == (edge.device_id, "wsmod")

    # its module twin's desired patch, made at the hub, reaches it through the edge
    patches = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)
    hub.registry().update_module_twin(edge.device_id, "wsmod",
                                      Twin(properties=TwinProperties(desired={"threshold": 4})), "*")
    assert patches.get(timeout=30)["threshold"] == 4
    twin = run_with_timeout(client.get_twin, 15, "get_twin over WebSocket through the edge")
    assert twin["desired"]["threshold"] == 4


def test_the_edge_upgrade_needs_the_mqtt_subprotocol(hub, edge, tmp_path):
    started(hub, edge, tmp_path)
    ws = RawWebSocket(edge, protocol=None)
    try:
        assert ws.status == 400, ws.headers
    finally:
        ws.close()
    ws = RawWebSocket(edge)
    try:
        assert ws.status == 101, ws.headers
        assert "sec-websocket-protocol: mqtt" in ws.headers
    finally:
        ws.close()
