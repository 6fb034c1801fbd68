"""Metrics, read the way operators read them: a real Prometheus server (Debian's `prometheus`, started here as a
process on loopback with a config this test writes) scrapes the hub (`--metrics-bind`) and the edge daemon
(`[metrics] listen`) every second, and the counters are read back through Prometheus' HTTP API after a Python
module sends telemetry through the edge, a twin patch and a direct method.

Under CI=true a missing prometheus fails the test; elsewhere it is skipped with a message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from edge_harness import Edge, need
from harness import free_port, port_open, wait_for
from test_edge_hub import deploy, edge_manifest, python_module

SENT = 5

MODULE = textwrap.dedent("""\
    import os, sys, time
    from azure.iot.device import IoTHubModuleClient, Message, MethodResponse
    out = sys.argv[1]
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    def on_method(request):
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"pong": True}))
    client.on_method_request_received = on_method
    for i in range(%d):
        client.send_message_to_output(Message("reading %%d" %% i), "out1")
    client.patch_twin_reported_properties({"sent": %d})
    open(out, "w").write("done")
    while True:
        time.sleep(1)
""" % (SENT, SENT))


class Prometheus:
    """One Prometheus server scraping `targets` every second, with its own data directory."""

    def __init__(self, work: Path, targets: dict[str, str]) -> None:
        self.port = free_port("127.0.0.1")
        config = work / "prometheus.yml"
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            for job, target in targets.items()
        )
        config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}")
        self.log = open(work / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        wait_for(lambda: self.ready() or self.proc.poll() is not None, 60, "Prometheus to be ready")
        assert self.proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]

    def ready(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:  # 503 while it starts
            return False

    def query(self, promql: str) -> float | None:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, promql: str, predicate, what: str, timeout: float = 45) -> float:
        seen = []

        def check():
            value = self.query(promql)
            seen.append(value)
            return value is not None and predicate(value)

        try:
            wait_for(check, timeout, what, interval=0.5)
        except AssertionError as error:
            raise AssertionError(f"{error}; {promql} was {seen[-3:]}") from None
        return seen[-1]

    def targets_up(self) -> bool:
        return self.query("min(up)") == 1.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    need(binary is not None, "the metrics test needs Prometheus (Debian's prometheus; scripts/setup-test-env.sh)")
    return binary


def test_prometheus_scrapes_the_hub_and_the_edge_and_their_counters_follow_the_traffic(
        prometheus_binary, hub, loopback, tmp_path):
    hub_metrics = f"{hub.host}:{free_port(hub.host)}"
    hub.stop()
    hub.extra_args = ["--metrics-bind", hub_metrics]
    hub.start()

    edge_host = loopback.next()
    edge_metrics = f"{edge_host}:{free_port(edge_host)}"
    edge = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", edge_host,
                extra=f'\n[metrics]\nlisten = "{edge_metrics}"\n')
    prometheus = None
    try:
        done = tmp_path / "sender.done"
        modules = {"sender": python_module(tmp_path, "sender", MODULE, str(done))}
        deploy(hub, edge.device_id, edge_manifest(
            modules, routes={"up": "FROM /messages/modules/sender/outputs/out1 INTO $upstream"}), tmp_path)
        edge.start()
        prometheus = Prometheus(tmp_path, {"hub": hub_metrics, "edge": edge_metrics})
        wait_for(prometheus.targets_up, 30, "both targets up in Prometheus")
        wait_for(done.exists, 90, "the module to send its messages and its reported patch")

        sender = f"{edge.device_id}/sender"
        edge_labels = f'edge_device="{edge.device_id}",iothub="{hub.host}"'
        # The edge: Azure's names and labels, and the store's counters.
        prometheus.wait_value(
            f'edgehub_messages_received_total{{{edge_labels},id="{sender}",route_output="out1"}}',
            lambda v: v == SENT, "the edge hub to count the messages it received")
        prometheus.wait_value(
            f'sum(edgehub_messages_sent_total{{from="{sender}",to="$upstream",from_route_output="out1"}})',
            lambda v: v == SENT, "the edge hub to count the messages it sent upstream")
        prometheus.wait_value(f'edgehub_message_send_duration_seconds_count{{from="{sender}"}}',
                              lambda v: v == SENT, "a send duration for each message")
        prometheus.wait_value(f'outpost_edgehub_store_delivered_total{{endpoint="$upstream"}}',
                              lambda v: v == SENT, "the store to count the deliveries")
        prometheus.wait_value('edgehub_queue_length{endpoint="$upstream"}', lambda v: v == 0,
                              "the upstream queue to drain")
        prometheus.wait_value(f'edgehub_reported_properties_total{{id="{sender}"}}', lambda v: v == 1,
                              "the edge hub to count the reported patch")
        prometheus.wait_value('edgeAgent_module_start_total{module_name="sender"}', lambda v: v >= 1,
                              "the agent to count the module's start")
        prometheus.wait_value('edgeAgent_total_disk_space_bytes', lambda v: v > 0, "the disk's size")
        prometheus.wait_value('edgeAgent_used_memory_bytes{module_name="host"}', lambda v: v > 0, "memory")

        # The hub: telemetry in through the edge link, a twin patch and a method call from the service.
        prometheus.wait_value('outpost_hub_telemetry_messages_total{via="edge"}', lambda v: v == SENT,
                              "the hub to count the telemetry")
        prometheus.wait_value('outpost_hub_connected_devices', lambda v: v >= 1, "connected clients at the hub")
        registry = hub.registry()
        from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
        registry.update_module_twin(edge.device_id, "sender", Twin(properties=TwinProperties(desired={"x": 1})), "*")
        result = registry.invoke_device_module_method(
            edge.device_id, "sender", CloudToDeviceMethod(method_name="ping", payload={}, response_timeout_in_seconds=30))
        assert result.status == 200
        prometheus.wait_value(
            'outpost_hub_twin_operations_total{operation="update_desired",source="service"}', lambda v: v == 1,
            "the hub to count the twin patch")
        prometheus.wait_value('outpost_hub_method_calls_total{outcome="answered"}', lambda v: v == 1,
                              "the hub to count the method call")
        prometheus.wait_value(
            'outpost_hub_rest_request_duration_seconds_count'
            '{method="POST",route="/twins/{device}/modules/{module}/methods",status="200"}',
            lambda v: v == 1, "the method call's latency under its route template")
        prometheus.wait_value('outpost_hub_storage_commit_duration_seconds_count', lambda v: v > 0,
                              "storage commits timed")
        # Certificates: when each one stops being valid, for alerts (the defaults: a year for a CA, 90 days for a
        # server certificate, so both lie well in the future).
        now = time.time()
        prometheus.wait_value('outpost_certificate_expiry_timestamp_seconds{job="hub",certificate="hub server"}',
                              lambda v: now + 80 * 86400 < v < now + 91 * 86400, "the hub's server certificate expiry")
        prometheus.wait_value(
            'outpost_certificate_expiry_timestamp_seconds{job="edge",certificate="edge hub server"}',
            lambda v: now + 80 * 86400 < v < now + 91 * 86400, "the edge hub's server certificate expiry")
        prometheus.wait_value('count(outpost_certificate_expiry_timestamp_seconds{job="edge",certificate=~"CA .*"})',
                              lambda v: v >= 1, "the edge CA's expiry")
        raw_paths = prometheus.query(f'count({{route=~".*{edge.device_id}.*"}})')
        assert raw_paths is None, "a route label held a raw path"
    finally:
        if prometheus is not None:
            prometheus.stop()
        edge.cleanup()
