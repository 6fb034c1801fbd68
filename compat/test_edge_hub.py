"""The edge hub, end to end through `outpost edge run` with the unmodified Azure SDK: Python modules started as
process modules from the edge environment (workload API, gateway), routes with WHERE conditions between
modules and to the hub, module-to-module direct methods through the edge's HTTPS API, downstream devices,
and the gateway's refusals. These need no Docker: the modules are processes.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from edge_harness import deployment, wait_reported
from harness import Monitor, RawMqtt, wait_for

SENDER = textwrap.dedent("""\
    import json, os, sys, time
    from azure.iot.device import IoTHubModuleClient, Message
    out = sys.argv[1]
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    twin = client.get_twin()
    client.patch_twin_reported_properties({"sender": "ready", "seenDesired": twin["desired"]["$version"]})
    for temperature in (20, 30):
        message = Message(json.dumps({"temperature": temperature}))
        message.content_type = "application/json"
        message.content_encoding = "utf-8"
        message.custom_properties["kind"] = "hot" if temperature > 25 else "cold"
        client.send_message_to_output(message, "out1")
    result, deadline = None, time.time() + 40
    while result is None and time.time() < deadline:
        try:
            result = client.invoke_method({"methodName": "ping", "payload": {"x": 1}, "responseTimeoutInSeconds": 10},
                                          device_id=os.environ["IOTEDGE_DEVICEID"], module_id="receiver")
        except Exception as e:  # the receiver may not listen yet
            last_error = repr(e)
            time.sleep(0.5)
    with open(out + ".tmp", "w") as f:
        json.dump({"twin": twin, "method": result}, f)
    os.rename(out + ".tmp", out)
    while True:
        time.sleep(1)
""")

RECEIVER = textwrap.dedent("""\
    import sys, time
    from azure.iot.device import IoTHubModuleClient, Message, MethodResponse
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    def on_message(message):
        if message.input_name == "in1":
            forwarded = Message(message.data, content_type="application/json", content_encoding="utf-8")
            forwarded.custom_properties.update(message.custom_properties)
            forwarded.custom_properties["forwarded"] = "yes"
            client.send_message_to_output(forwarded, "fwd")
    def on_method(request):
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"pong": request.payload}))
    client.on_message_received = on_message
    client.on_method_request_received = on_method
    while True:
        time.sleep(1)
""")

ROUTES = {
    "hot": "FROM /messages/modules/sender/outputs/out1 WHERE kind = 'hot' "
           'INTO BrokeredEndpoint("/modules/receiver/inputs/in1")',
    "forwarded": "FROM /messages/modules/receiver/outputs/* INTO $upstream",
    "leaves": "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream",
}


def python_module(tmp_path: Path, name: str, source: str, *args: str) -> dict:
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    return {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
            "settings": {"path": sys.executable, "args": [str(script), *args]}}


def edge_manifest(modules: dict, routes: dict | None = None, ttl: int = 7200) -> dict:
    manifest = deployment(modules)
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"] = routes if routes is not None else ROUTES
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["storeAndForwardConfiguration"] = {"timeToLiveSecs": ttl}
    return manifest


def deploy(hub, device_id: str, manifest: dict, tmp_path: Path) -> None:
    path = tmp_path / f"manifest-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(manifest))
    hub.run_cli(["deploy", device_id, str(path)])


def edge_hub_reported(hub, edge) -> dict:
    return hub.registry().get_module_twin(edge.device_id, "$edgeHub").properties.reported or {}


def test_python_modules_route_with_a_condition_and_call_each_other_through_the_edge(hub, edge, tmp_path):
    out = tmp_path / "sender.json"
    modules = {"sender": python_module(tmp_path, "sender", SENDER, str(out)),
               "receiver": python_module(tmp_path, "receiver", RECEIVER)}
    monitor = Monitor(hub, count=1, timeout=90)
    deploy(hub, edge.device_id, edge_manifest(modules), tmp_path)
    edge.start()

    messages = monitor.messages()
    assert len(messages) == 1, messages
    forwarded = messages[0]
    assert forwarded["moduleId"] == "receiver" and forwarded["deviceId"] == edge.device_id
    assert json.loads(forwarded["body"]) == {"temperature": 30}
    assert forwarded["properties"]["kind"] == "hot" and forwarded["properties"]["forwarded"] == "yes"

    seen = json.loads(wait_for(lambda: out.exists() and out.read_text(), 60, "the sender's report"))
    assert seen["method"] == {"status": 200, "payload": {"pong": {"x": 1}}}
    assert "$version" in seen["twin"]["desired"]
    twin = hub.registry().get_module_twin(edge.device_id, "sender")
    wait_for(lambda: (hub.registry().get_module_twin(edge.device_id, "sender").properties.reported or {}).get("sender")
             == "ready", 30, "the sender's reported properties at the hub")

    status = wait_for(lambda: edge_hub_reported(hub, edge).get("lastDesiredStatus"), 30, "$edgeHub's status")
    assert status["code"] == 200
    clients = wait_for(lambda: edge_hub_reported(hub, edge).get("clients"), 30, "$edgeHub's clients")
    assert clients[f"{edge.device_id}/sender"]["status"] == "Connected"
    stats = edge.stats()
    assert stats["expired"] == 0 and stats["dropped"] == 0 and stats["delivered"] >= 2


def test_a_downstream_device_sends_telemetry_through_the_edge(hub, edge, tmp_path, clients):
    from azure.iot.device import IoTHubDeviceClient, Message
    deploy(hub, edge.device_id, edge_manifest({}), tmp_path)
    edge.start()
    leaf = hub.cli_json("device", "create", f"leaf-{uuid.uuid4().hex[:4]}", "--parent", edge.device_id)
    key = leaf["authentication"]["symmetricKey"]["primaryKey"]
    assert leaf["parentScopes"], "a child device records its parent's scope"
    cs = f"HostName={hub.host};DeviceId={leaf['deviceId']};SharedAccessKey={key};GatewayHostName={edge.host}"
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=edge.ca_path.read_text(),
                                                              connection_retry=False)
    clients.created.append(client)
    monitor = Monitor(hub, count=3, timeout=60)
    client.connect()
    for i in range(3):
        message = Message(f"leaf-{i}")
        message.custom_properties["n"] = str(i)
        client.send_message(message)
    got = monitor.messages()
    assert [m["body"] for m in got] == ["leaf-0", "leaf-1", "leaf-2"]
    assert all(m["deviceId"] == leaf["deviceId"] and m["moduleId"] is None for m in got)


def test_garbage_forged_and_foreign_tokens_are_refused_and_the_gateway_keeps_serving(hub, edge, tmp_path, clients):
    from azure.iot.device import IoTHubDeviceClient, Message
    deploy(hub, edge.device_id, edge_manifest({}), tmp_path)
    edge.start()
    good = hub.cli_json("device", "create", "good-leaf", "--parent", edge.device_id)
    other = hub.cli_json("device", "create", "other-leaf", "--parent", edge.device_id)
    target = SimpleNamespace(host=edge.host, ca_path=edge.ca_path)

    raw = RawMqtt(target)
    raw.send(b"\x10\xff\xff\xff\xff\x7f garbage")
    assert raw.read_packet() is None, "garbage must close the connection"
    raw.close()

    forged = RawMqtt(target)
    assert forged.connect("good-leaf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=") == 5
    forged.close()
    foreign = RawMqtt(target)
    other_key = other["authentication"]["symmetricKey"]["primaryKey"]
    from harness import device_sas
    assert foreign.connect("good-leaf", other_key, token=device_sas(hub.host, "other-leaf", other_key)) == 5
    foreign.close()
    stranger = RawMqtt(target)
    assert stranger.connect("not-a-child", other_key) == 5
    stranger.close()

    key = good["authentication"]["symmetricKey"]["primaryKey"]
    cs = f"HostName={hub.host};DeviceId=good-leaf;SharedAccessKey={key};GatewayHostName={edge.host}"
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=edge.ca_path.read_text(),
                                                              connection_retry=False)
    clients.created.append(client)
    monitor = Monitor(hub, count=1, timeout=60)
    client.connect()
    client.send_message(Message("still serving"))
    assert monitor.messages()[0]["body"] == "still serving"


def test_cloud_methods_reach_a_module_through_the_edge_and_a_bad_route_keeps_the_old_ones(hub, edge, tmp_path, clients):
    from azure.iot.device import IoTHubDeviceClient, Message
    from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
    deploy(hub, edge.device_id, edge_manifest({"receiver": python_module(tmp_path, "receiver", RECEIVER)}), tmp_path)
    edge.start()
    registry = hub.registry()

    def invoke():
        try:
            return registry.invoke_device_module_method(
                edge.device_id, "receiver", CloudToDeviceMethod(method_name="ping", payload={"from": "cloud"},
                                                                response_timeout_in_seconds=10))
        except Exception:  # noqa: BLE001 - not connected yet
            return None

    result = wait_for(invoke, 60, "the receiver to answer a cloud method through the edge")
    assert result.status == 200 and result.payload == {"pong": {"from": "cloud"}}

    version = wait_for(lambda: edge_hub_reported(hub, edge).get("lastDesiredVersion"), 30, "$edgeHub's report")
    bad = dict(ROUTES, broken="FROM /messages/* WHERE ( INTO $upstream")
    desired = edge_manifest({})["modulesContent"]["$edgeHub"]["properties.desired"]
    desired["routes"] = bad
    registry.update_module_twin(edge.device_id, "$edgeHub", Twin(properties=TwinProperties(desired=desired)), "*")
    status = wait_for(lambda: (lambda r: r.get("lastDesiredStatus") if (r.get("lastDesiredVersion") or 0) > version
                               else None)(edge_hub_reported(hub, edge)), 30, "the refusal of the bad route")
    assert status["code"] == 400 and "broken" in status["description"]

    leaf = hub.cli_json("device", "create", "leaf-after-bad-route", "--parent", edge.device_id)
    key = leaf["authentication"]["symmetricKey"]["primaryKey"]
    cs = f"HostName={hub.host};DeviceId=leaf-after-bad-route;SharedAccessKey={key};GatewayHostName={edge.host}"
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=edge.ca_path.read_text(),
                                                              connection_retry=False)
    clients.created.append(client)
    monitor = Monitor(hub, count=1, timeout=60)
    client.connect()
    client.send_message(Message("routed by the previous routes"))
    assert monitor.messages()[0]["body"] == "routed by the previous routes"
