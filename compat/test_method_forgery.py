"""Direct-method answers cannot be forged (issue 9, item 1).

A method request goes to one identity on one connection; an answer from any other client, even one that
learnt the request id, is dropped and the call waits for the real answer. Request ids are 128 random bits.
Checked at the hub (device against device), through an edge hub (module against module, for a cloud call
forwarded over the upstream link and for a call of the edge's local method API).
"""

from __future__ import annotations

import json
import re
import textwrap
import threading
import time

from azure.iot.device import MethodResponse
from azure.iot.hub.models import CloudToDeviceMethod

from harness import set_handler, wait_for
from test_edge_hub import deploy, edge_manifest, python_module


def test_a_device_cannot_answer_a_method_sent_to_another_device(hub, registry, clients):
    keys = {}
    for device in ("victim", "forger"):
        keys[device] = registry.create_device_with_sas(device, "", "", "enabled").authentication.symmetric_key.primary_key
    victim = clients.open(hub, "victim", keys["victim"])
    forger = clients.open(hub, "forger", keys["forger"])
    requests = []
    set_handler(victim, "on_method_request_received", requests.append)

    result = {}

    def invoke():
        result["answer"] = registry.invoke_device_method("victim", CloudToDeviceMethod(
            method_name="open-door", payload={}, response_timeout_in_seconds=20))

    caller = threading.Thread(target=invoke)
    caller.start()
    request = wait_for(lambda: requests and requests[0], 15, "the victim to receive the call")
    assert re.fullmatch(r"[0-9a-f]{32}", request.request_id), f"a guessable request id: {request.request_id!r}"

    # The forger learnt the request id (the worst case) and answers first.
    forger.send_method_response(MethodResponse(request.request_id, 200, {"from": "forger"}))
    time.sleep(1)
    victim.send_method_response(MethodResponse.create_from_method_request(request, 201, {"from": "victim"}))
    caller.join(30)

    assert result["answer"].status == 201
    assert result["answer"].payload == {"from": "victim"}


# Writes each request it receives to req-{method}.json, waits until the forger has answered it, then answers.
TARGET = textwrap.dedent("""\
    import json, os, sys, time
    from azure.iot.device import IoTHubModuleClient, MethodResponse
    work = sys.argv[1]
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    def on_method(request):
        with open(os.path.join(work, f"req-{request.name}.tmp"), "w") as f:
            json.dump({"rid": request.request_id}, f)
        os.rename(os.path.join(work, f"req-{request.name}.tmp"), os.path.join(work, f"req-{request.name}.json"))
        deadline = time.time() + 20
        while not os.path.exists(os.path.join(work, f"forged-{request.name}")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        client.send_method_response(MethodResponse.create_from_method_request(request, 201, {"from": "target"}))
    client.on_method_request_received = on_method
    while True:
        time.sleep(1)
""")

# Answers every request id the target has seen, as if it were the target.
FORGER = textwrap.dedent("""\
    import glob, json, os, sys, time
    from azure.iot.device import IoTHubModuleClient, MethodResponse
    work = sys.argv[1]
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    done = set()
    while True:
        for path in glob.glob(os.path.join(work, "req-*.json")):
            if path in done:
                continue
            rid = json.load(open(path))["rid"]
            client.send_method_response(MethodResponse(rid, 200, {"from": "forger"}))
            done.add(path)
            name = os.path.basename(path)[len("req-"):-len(".json")]
            open(os.path.join(work, f"forged-{name}"), "w").close()
        time.sleep(0.1)
""")

# Calls the target through the edge hub's method API once asked to (a file go-local appears).
CALLER = textwrap.dedent("""\
    import json, os, sys, time
    from azure.iot.device import IoTHubModuleClient
    work = sys.argv[1]
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    while not os.path.exists(os.path.join(work, "go-local")):
        time.sleep(0.1)
    result = client.invoke_method({"methodName": "local", "payload": {}, "responseTimeoutInSeconds": 30},
                                  device_id=os.environ["IOTEDGE_DEVICEID"], module_id="target")
    with open(os.path.join(work, "local.tmp"), "w") as f:
        json.dump(result, f)
    os.rename(os.path.join(work, "local.tmp"), os.path.join(work, "local.json"))
    while True:
        time.sleep(1)
""")


def test_a_module_cannot_answer_a_method_sent_to_another_module_through_the_edge(hub, edge, tmp_path):
    work = tmp_path / "methods"
    work.mkdir()
    modules = {name: python_module(tmp_path, name, source, str(work))
               for name, source in (("target", TARGET), ("forger", FORGER), ("caller", CALLER))}
    deploy(hub, edge.device_id, edge_manifest(modules, routes={"up": "FROM /messages/* INTO $upstream"}), tmp_path)
    edge.start()
    registry = hub.registry()

    def invoke_cloud():
        try:
            return registry.invoke_device_module_method(edge.device_id, "target", CloudToDeviceMethod(
                method_name="cloud", payload={}, response_timeout_in_seconds=30))
        except Exception:  # noqa: BLE001 - the target is not connected yet
            return None

    cloud = wait_for(invoke_cloud, 90, "a cloud call to reach the target through the edge")
    assert (work / "forged-cloud").exists(), "the forger answered before the target"
    assert cloud.status == 201 and cloud.payload == {"from": "target"}
    assert re.fullmatch(r"[0-9a-f]{32}", json.loads((work / "req-cloud.json").read_text())["rid"])

    (work / "go-local").touch()
    local = json.loads(wait_for(lambda: (work / "local.json").exists() and (work / "local.json").read_text(), 60,
                                "the caller's result"))
    assert (work / "forged-local").exists(), "the forger answered before the target"
    assert local == {"status": 201, "payload": {"from": "target"}}
