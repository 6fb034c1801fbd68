"""`$edgeHub` route changes while the edge is connected, through `outpost edge run` with the unmodified Azure SDK in
Python process modules: a deployment applied around a reconnect of the upstream link comes into force without
waiting for the next reconnect, and a message acknowledged under a route set reaches that route's endpoint.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from edge_harness import deployment
from harness import wait_for
from test_edge_inputs_and_agent_report import RECEIVER

# Sends {"n": k} on out1 for every file k that appears in the trigger directory.
SENDER = textwrap.dedent("""\
    import json, os, sys, time
    from azure.iot.device import IoTHubModuleClient, Message
    triggers = sys.argv[1]
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    sent = set()
    while True:
        for name in sorted(os.listdir(triggers)):
            if name not in sent:
                client.send_message_to_output(Message(json.dumps({"n": int(name)})), "out1")
                sent.add(name)
        time.sleep(0.2)
""")


def python_module(tmp_path: Path, name: str, source: str, *args: str) -> dict:
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    return {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
            "settings": {"path": sys.executable, "args": [str(script), *args]}}


class Scenario:
    """A sender module that sends {"n": k} on out1 when told, a receiver module that records what reaches each of
    its inputs, and deployments whose single route takes out1 to input `in{n}`."""

    def __init__(self, hub, edge, tmp_path: Path) -> None:
        self.hub, self.edge, self.tmp_path = hub, edge, tmp_path
        self.triggers, self.received = tmp_path / "triggers", tmp_path / "received.jsonl"
        self.triggers.mkdir()
        self.modules = {"sender": python_module(tmp_path, "sender", SENDER, str(self.triggers)),
                        "receiver": python_module(tmp_path, "receiver", RECEIVER, str(self.received),
                                                 "in1", "in2", "in3")}

    def deploy_to(self, n: int) -> None:
        manifest = deployment(self.modules)
        manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"] = {
            "only": f'FROM /messages/modules/sender/outputs/out1 INTO BrokeredEndpoint("/modules/receiver/inputs/in{n}")'}
        path = self.tmp_path / f"manifest-{n}.json"
        path.write_text(json.dumps(manifest))
        self.hub.run_cli(["deploy", self.edge.device_id, str(path)])

    def edge_hub_twin(self):
        return self.hub.registry().get_module_twin(self.edge.device_id, "$edgeHub")

    def in_force(self, what: str) -> None:
        """Waits until `$edgeHub` reports the desired version now at the hub as applied."""
        version = self.edge_hub_twin().properties.desired["$version"]

        def applied():
            reported = self.edge_hub_twin().properties.reported or {}
            return (reported.get("lastDesiredVersion") or 0) >= version and \
                reported.get("lastDesiredStatus", {}).get("code") == 200
        try:
            wait_for(applied, 20, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; $edgeHub reported: {self.edge_hub_twin().properties.reported}\n"
                                 f"{self.edge.log_tail(30)}") from None

    def send_and_expect(self, n: int) -> None:
        """Message n, sent (and acknowledged) under the routes to in{n}, reaches in{n}."""
        wait_for(lambda: Path(f"{self.received}.ready").exists(), 60, "the receiver to be ready")
        (self.triggers / str(n)).write_text("")
        want = {"input": f"in{n}", "n": n}
        got = lambda: [json.loads(l) for l in self.received.read_text().splitlines()] if self.received.exists() else []
        try:
            wait_for(lambda: want in got(), 30, f"message {n} at input in{n}")
        except AssertionError as e:
            raise AssertionError(f"{e}; received: {got()}") from None


def test_routes_deployed_while_connected_or_while_the_link_reconnects_route_the_next_message(hub, edge, tmp_path):
    scenario = Scenario(hub, edge, tmp_path)
    scenario.deploy_to(1)
    edge.start()
    scenario.in_force("the first routes in force")
    scenario.send_and_expect(1)

    # Applied as soon as the hub is back, while the edge's link reconnects.
    hub.restart()
    scenario.deploy_to(2)
    scenario.in_force("routes deployed while the link reconnects")
    scenario.send_and_expect(2)

    # Applied while connected.
    edge.wait_online(30)
    scenario.deploy_to(3)
    scenario.in_force("routes deployed while connected")
    scenario.send_and_expect(3)


def test_routes_deployed_after_a_hub_restart_the_edge_did_not_notice_route_the_next_message(hub, edge, tmp_path):
    scenario = Scenario(hub, edge, tmp_path)
    scenario.deploy_to(1)
    edge.start()
    scenario.in_force("the first routes in force")
    for n in (2, 3):
        hub.restart()
        edge.wait_online(30)
        scenario.deploy_to(n)
        scenario.in_force(f"routes deployed after hub restart {n - 1}")
        scenario.send_and_expect(n)
