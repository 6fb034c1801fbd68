"""Two edge seams, through `outpost edge run` with the unmodified Azure SDK in Python process modules: one
message routed to two inputs of one module reaches each input exactly once and in order (deliveries are told
apart by endpoint, not only by log sequence), and a module removed while `$edgeAgent` is away from the hub
leaves the agent's reported properties once it is back (the agent diffs against the twin's reported).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
import uuid
from pathlib import Path

from edge_harness import deployment, reported_modules, wait_reported
from harness import wait_for

COUNT = 6

SENDER = textwrap.dedent("""\
    import json, os, sys, time
    from azure.iot.device import IoTHubModuleClient, Message
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.2)
    for n in range(int(sys.argv[1])):
        client.send_message_to_output(Message(json.dumps({"n": n})), "out1")
    while True:
        time.sleep(1)
""")

# The SDK runs `on_message_received` handlers on a pool of four threads, so their order says nothing about the
# order of delivery; `receive_message_on_input` takes each input's messages from its inbox in arrival order. The
# SDK drops a message for an input it has no inbox for yet (an inbox is made by the first receive on that input,
# after the subscription), so the receiver makes every inbox first and then says it is ready (`{out}.ready`);
# the tests send nothing before. Arguments: the file to record in, then the inputs to read.
RECEIVER = textwrap.dedent("""\
    import json, sys, threading, time
    from azure.iot.device import IoTHubModuleClient
    out = sys.argv[1]
    lock = threading.Lock()
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    for input_name in sys.argv[2:]:
        client.receive_message_on_input(input_name, block=False)
    open(out + ".ready", "w").close()
    def receive(input_name):
        while True:
            message = client.receive_message_on_input(input_name)
            with lock, open(out, "a") as f:
                f.write(json.dumps({"input": message.input_name, "n": json.loads(message.data)["n"]}) + "\\n")
    for input_name in sys.argv[2:]:
        threading.Thread(target=receive, args=(input_name,), daemon=True).start()
    while True:
        time.sleep(1)
""")

IDLE = "import time\nwhile True:\n    time.sleep(1)\n"


def python_module(tmp_path: Path, name: str, source: str, *args: str) -> dict:
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    return {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
            "settings": {"path": sys.executable, "args": [str(script), *args]}}


def deploy(hub, device_id: str, modules: dict, routes: dict, tmp_path: Path) -> None:
    manifest = deployment(modules)
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"] = routes
    path = tmp_path / f"manifest-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(manifest))
    hub.run_cli(["deploy", device_id, str(path)])


def test_one_message_routed_to_two_inputs_of_one_module_reaches_each_input_once_in_order(hub, edge, tmp_path):
    received, go = tmp_path / "received.jsonl", tmp_path / "go"
    modules = {"sender": python_module(tmp_path, "sender", SENDER, str(COUNT), str(go)),
               "receiver": python_module(tmp_path, "receiver", RECEIVER, str(received), "in1", "in2")}
    source = "FROM /messages/modules/sender/outputs/out1"
    routes = {"first": f'{source} INTO BrokeredEndpoint("/modules/receiver/inputs/in1")',
              "second": f'{source} INTO BrokeredEndpoint("/modules/receiver/inputs/in2")'}
    deploy(hub, edge.device_id, modules, routes, tmp_path)
    edge.start()
    # The routes of the first start come into force when the upstream link is first up (messages accepted
    # before are routed nowhere, a window of its own): send once they are reported in force.
    wait_for(lambda: ((hub.registry().get_module_twin(edge.device_id, "$edgeHub").properties.reported or {})
                      .get("lastDesiredStatus") or {}).get("code") == 200, 60, "the routes in force")
    wait_for(lambda: Path(f"{received}.ready").exists(), 60, "the receiver to be ready")
    go.write_text("go")

    def by_input() -> dict:
        lines = received.read_text().splitlines() if received.exists() else []
        seen: dict = {"in1": [], "in2": []}
        for line in lines:
            entry = json.loads(line)
            seen.setdefault(entry["input"], []).append(entry["n"])
        return seen

    wanted = list(range(COUNT))
    try:
        wait_for(lambda: all(len(v) >= COUNT for v in by_input().values()), 60, "both inputs to get every message")
    except AssertionError as e:
        raise AssertionError(f"{e}; received: {by_input()}\n{edge.log_tail(40)}") from None
    time.sleep(3)  # a duplicate or a redelivery would show by now
    assert by_input() == {"in1": wanted, "in2": wanted}

    def settled():
        endpoints = edge.stats()["endpoints"]
        inputs = {name: e for name, e in endpoints.items() if "/receiver/" in name}
        done = len(inputs) == 2 and all(e["inFlight"] == 0 and e["queued"] == 0 and e["delivered"] == COUNT
                                        for e in inputs.values())
        return inputs if done else None

    try:
        wait_for(settled, 15, "both inputs to have nothing left in flight")
    except AssertionError as e:
        raise AssertionError(f"{e}; stats: {json.dumps(edge.stats()['endpoints'])}") from None


def test_a_module_removed_while_the_agent_is_away_from_the_hub_leaves_the_reported_modules(hub, edge, tmp_path):
    modules = {"keep": python_module(tmp_path, "keep", IDLE), "gone": python_module(tmp_path, "gone", IDLE)}
    deploy(hub, edge.device_id, modules, {}, tmp_path)
    edge.start()
    wait_reported(hub, edge.device_id,
                  lambda r: all((r.get("modules") or {}).get(m, {}).get("runtimeStatus") == "running"
                                for m in ("keep", "gone")), 60, "both modules running in $edgeAgent's report")

    # The agent is away from the hub while the deployment changes: when it starts again it runs its
    # last-known-good deployment (with `gone`) until it reads the new one from the hub.
    edge.stop()
    deploy(hub, edge.device_id, {"keep": modules["keep"]}, {}, tmp_path)
    edge.start()
    wait_reported(hub, edge.device_id, lambda r: "gone" not in (r.get("modules") or {})
                  and (r.get("modules") or {}).get("keep", {}).get("runtimeStatus") == "running",
                  20, "the removed module to leave $edgeAgent's reported modules")
    time.sleep(2)
    assert set(reported_modules(hub, edge.device_id)) == {"keep"}
