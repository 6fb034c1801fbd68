"""The edge runtime's agent, end to end through `outpost edge run`: a deployment applied through the hub
becomes running module instances (Docker containers from a local registry, and native processes), each with
its own identity in the hub and its workload socket, supervised by its restart policy.

Needs the real Docker daemon and a local registry: under CI a missing one fails, elsewhere these tests skip.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from edge_harness import (Edge, IN_CI, deployment, docker, docker_available, need, push_test_image,
                          reported_modules, start_registry, wait_reported)
from harness import wait_for


@pytest.fixture(scope="session")
def test_image(tmp_path_factory):
    need(docker_available(), "the Docker daemon is not reachable")
    work = tmp_path_factory.mktemp("registry")
    registry = start_registry(work)
    from edge_harness import registry_answers
    need(registry_answers(), "no registry answers on 127.0.0.1:5000 and Debian's docker-registry is not installed")
    image = push_test_image(uuid.uuid4().hex[:8])
    # Pulled back from the registry by the agent: the local copy must not be what makes the test pass.
    docker("rmi", image, check=False)
    yield image
    if registry is not None:
        registry.terminate()


@pytest.fixture
def edge(hub, tmp_path, test_image, loopback):
    run = uuid.uuid4().hex[:6]
    daemon = Edge(hub, f"edge-{run}", tmp_path, "docker", f"outpost-test-{run}", loopback.next())
    yield daemon
    daemon.cleanup()


def sensor(image: str, marker: str = "v1", **extra) -> dict:
    module = {"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
              "imagePullPolicy": "on-create", "startupOrder": 1,
              "settings": {"image": image, "createOptions": json.dumps({"Cmd": ["sh", "-c", "env; sleep 3600"]})},
              "env": {"MARKER": {"value": marker}}}
    module.update(extra)
    return module


PROBE = textwrap.dedent("""\
    # A module written with the unmodified Azure SDK: it gets the trust bundle and a signed token from the
    # workload API the way every Azure IoT Edge module does, then records what it saw and stays up.
    import json, os, sys, time
    from azure.iot.device import IoTHubModuleClient
    out = sys.argv[1]
    try:
        client = IoTHubModuleClient.create_from_edge_environment()
        result = {"ok": True}
    except Exception as e:  # recorded for the test to show
        result = {"ok": False, "error": repr(e)}
    result["env"] = {k: v for k, v in os.environ.items() if k.startswith("IOTEDGE_")}
    result["pid"] = os.getpid()
    with open(out + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(out + ".tmp", out)
    while True:
        time.sleep(1)
""")


def process_module(tmp_path: Path, name: str) -> tuple[dict, Path]:
    script = tmp_path / f"{name}.py"
    script.write_text(PROBE)
    out = tmp_path / f"{name}.json"
    module = {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always", "startupOrder": 0,
              "settings": {"path": sys.executable, "args": [str(script), str(out)]}}
    return module, out


def all_running(names):
    def check(reported):
        modules = reported.get("modules") or {}
        return all((modules.get(n) or {}).get("runtimeStatus") == "running" for n in names)
    return check


def env_of(info: dict) -> dict:
    return dict(item.split("=", 1) for item in info["Config"]["Env"])


def deploy(hub, device_id: str, manifest: dict, tmp_path: Path) -> None:
    path = tmp_path / f"manifest-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(manifest))
    hub.run_cli(["deploy", device_id, str(path)])


def workload_call(socket_path: Path, module: str) -> tuple[int, dict]:
    """POSTs a sign request to a workload socket from this (test) process and returns (status, body)."""
    body = json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": "aGVsbG8="}).encode()
    request = (f"POST /modules/{module}/genid/1/sign?api-version=2022-08-03 HTTP/1.1\r\nHost: localhost\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(socket_path))
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload or b"{}")


def test_one_image_twice_and_a_process_module_run_with_their_own_identities(hub, edge, test_image, tmp_path):
    probe, probe_out = process_module(tmp_path, "probe")
    deploy(hub, edge.device_id, deployment({"sensorA": sensor(test_image), "sensorB": sensor(test_image),
                                            "probe": probe}), tmp_path)
    edge.start()
    reported = wait_reported(hub, edge.device_id, all_running(["sensorA", "sensorB", "probe"]), 90,
                             "all three modules running")
    assert reported["lastDesiredStatus"]["code"] == 200

    registry = hub.registry()
    a, b = registry.get_module(edge.device_id, "sensorA"), registry.get_module(edge.device_id, "sensorB")
    assert a.managed_by == "IotEdge" and b.managed_by == "IotEdge"
    assert a.authentication.symmetric_key.primary_key != b.authentication.symmetric_key.primary_key

    for name, identity in (("sensorA", a), ("sensorB", b)):
        info = edge.inspect(name)
        assert info is not None and info["State"]["Running"], f"container of {name} is not running"
        env = env_of(info)
        assert env["IOTEDGE_MODULEID"] == name
        assert env["IOTEDGE_DEVICEID"] == edge.device_id
        assert env["IOTEDGE_MODULEGENERATIONID"] == identity.generation_id
        assert env["IOTEDGE_IOTHUBHOSTNAME"] == hub.host
        assert env["IOTEDGE_GATEWAYHOSTNAME"] == edge.host
        assert env["IOTEDGE_WORKLOADURI"] == "unix:///var/run/iotedge/workload.sock"
        assert env["IOTEDGE_APIVERSION"] == "2022-08-03"
        assert env["MARKER"] == "v1"
        mounts = {m["Destination"]: m["Source"] for m in info["Mounts"]}
        assert mounts["/var/run/iotedge/workload.sock"] == str(edge.data_dir / "mnt" / f"{name}.sock")
        assert any(h.startswith(f"{edge.host}:") for h in info["HostConfig"]["ExtraHosts"] or [])
        assert edge.network in info["NetworkSettings"]["Networks"]

    seen = json.loads(wait_for(lambda: probe_out.exists() and probe_out.read_text(), 60, "the probe's report"))
    assert seen["ok"], f"the Azure SDK could not use the workload API: {seen.get('error')}"
    assert seen["env"]["IOTEDGE_MODULEID"] == "probe"
    assert seen["env"]["IOTEDGE_WORKLOADURI"] == f"unix://{edge.data_dir / 'mnt' / 'probe.sock'}"

    listing = edge.cli("list").stdout
    for name in ("sensorA", "sensorB", "probe"):
        assert name in listing and "running" in listing

    # The operator commands on the device: logs, restart, check.
    assert "IOTEDGE_MODULEID=sensorA" in edge.cli("logs", "sensorA", "--tail", "100").stdout
    started = edge.inspect("sensorB")["State"]["StartedAt"]
    edge.cli("restart", "sensorB")
    restarted = edge.inspect("sensorB")["State"]
    assert restarted["Running"] and restarted["StartedAt"] != started
    check = edge.cli("check").stdout
    assert "FAIL" not in check and "hub: reachable" in check, check


def test_a_process_that_is_not_the_module_gets_403_from_the_workload_api(hub, edge, test_image, tmp_path):
    deploy(hub, edge.device_id, deployment({"sensorA": sensor(test_image)}), tmp_path)
    edge.start()
    wait_reported(hub, edge.device_id, all_running(["sensorA"]), 90, "sensorA running")
    sock = edge.data_dir / "mnt" / "sensorA.sock"
    status, body = workload_call(sock, "sensorA")
    assert (status, body) == (403, {"message": "forbidden"})
    # Another module's name on this socket is refused the same way.
    assert workload_call(sock, "sensorB")[0] == 403


def test_a_killed_instance_is_restarted_with_back_off(hub, edge, test_image, tmp_path):
    deploy(hub, edge.device_id, deployment({"sensorA": sensor(test_image)}), tmp_path)
    edge.start()
    wait_reported(hub, edge.device_id, all_running(["sensorA"]), 90, "sensorA running")
    docker("kill", edge.container("sensorA"))
    held = wait_reported(hub, edge.device_id,
                         lambda r: (r.get("modules") or {}).get("sensorA", {}).get("runtimeStatus") == "backoff", 20,
                         "sensorA reported in back-off")
    assert held["modules"]["sensorA"]["exitCode"] != 0
    back = wait_reported(hub, edge.device_id,
                         lambda r: (r.get("modules") or {}).get("sensorA", {}).get("restartCount", 0) >= 1
                         and r["modules"]["sensorA"]["runtimeStatus"] == "running", 60,
                         "sensorA restarted by its policy")
    assert back["modules"]["sensorA"]["lastExitTimeUtc"]
    assert edge.inspect("sensorA")["State"]["Running"]


def test_removing_a_module_removes_its_instance_and_identity_and_a_change_recreates_only_that_module(
        hub, edge, test_image, tmp_path):
    deploy(hub, edge.device_id, deployment({"sensorA": sensor(test_image), "sensorB": sensor(test_image),
                                            "sensorC": sensor(test_image)}), tmp_path)
    edge.start()
    wait_reported(hub, edge.device_id, all_running(["sensorA", "sensorB", "sensorC"]), 90, "three modules running")
    before = {name: edge.inspect(name)["Id"] for name in ("sensorA", "sensorB", "sensorC")}

    deploy(hub, edge.device_id, deployment({"sensorA": sensor(test_image),
                                            "sensorB": sensor(test_image, marker="v2")}), tmp_path)
    wait_reported(hub, edge.device_id,
                  lambda r: "sensorC" not in (r.get("modules") or {}) and all_running(["sensorA", "sensorB"])(r), 90,
                  "sensorC gone from the report")
    wait_for(lambda: edge.inspect("sensorC") is None, 30, "sensorC's container to be removed")
    from msrest.exceptions import HttpOperationError
    with pytest.raises(HttpOperationError):
        hub.registry().get_module(edge.device_id, "sensorC")
    after_b = wait_for(lambda: (lambda i: i if i and env_of(i).get("MARKER") == "v2" else None)(edge.inspect("sensorB")),
                       60, "sensorB recreated with its new settings")
    assert after_b["Id"] != before["sensorB"]
    assert edge.inspect("sensorA")["Id"] == before["sensorA"], "an unchanged module must not be recreated"


def test_an_invalid_deployment_is_reported_and_nothing_running_changes(hub, edge, test_image, tmp_path):
    deploy(hub, edge.device_id, deployment({"sensorA": sensor(test_image)}), tmp_path)
    edge.start()
    wait_reported(hub, edge.device_id, all_running(["sensorA"]), 90, "sensorA running")
    before = edge.inspect("sensorA")["Id"]
    # The hub refuses a bad manifest itself; a bad desired document written straight into the $edgeAgent twin
    # reaches the agent, which must refuse it.
    from azure.iot.hub.models import Twin, TwinProperties
    bad = deployment({}, schema="2.0")["modulesContent"]["$edgeAgent"]["properties.desired"]
    hub.registry().replace_module_twin(edge.device_id, "$edgeAgent", Twin(properties=TwinProperties(desired=bad)), "*")
    reported = wait_reported(hub, edge.device_id, lambda r: r.get("lastDesiredStatus", {}).get("code") == 412, 30,
                             "the refusal reported")
    assert "sensorA" in reported["modules"]
    time.sleep(2)
    assert edge.inspect("sensorA")["Id"] == before and edge.inspect("sensorA")["State"]["Running"]


def test_a_restart_while_the_hub_is_down_brings_every_module_back(hub, edge, test_image, tmp_path):
    probe, probe_out = process_module(tmp_path, "probe")
    deploy(hub, edge.device_id, deployment({"sensorA": sensor(test_image), "probe": probe}), tmp_path)
    edge.start()
    wait_reported(hub, edge.device_id, all_running(["sensorA", "probe"]), 90, "modules running")
    wait_for(probe_out.exists, 60, "the probe's report")
    first_pid = json.loads(probe_out.read_text())["pid"]

    hub.stop()
    edge.kill()
    docker("stop", "-t", "1", edge.container("sensorA"))  # as if the device had rebooted
    probe_out.unlink()
    edge.start()
    wait_for(lambda: (edge.inspect("sensorA") or {}).get("State", {}).get("Running"), 60,
             "sensorA running again without the hub")
    seen = json.loads(wait_for(lambda: probe_out.exists() and probe_out.read_text(), 60, "the probe running again"))
    assert seen["pid"] != first_pid
    assert seen["ok"], "the workload API must sign with the cached identity while the hub is down"
    assert "running" in edge.cli("list").stdout

    hub.start()
    wait_reported(hub, edge.device_id, all_running(["sensorA", "probe"]), 90, "the report caught up after reconnect")


def test_sigterm_leaves_containers_running_stops_processes_and_the_next_start_adopts_the_containers(
        hub, edge, test_image, tmp_path):
    from test_edge_shutdown import SLEEPER, alive
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    pid_file = tmp_path / "sleeper.pid"
    sleeper = {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
               "startupOrder": 0, "settings": {"path": sys.executable, "args": [str(script), str(pid_file)]}}
    deploy(hub, edge.device_id, deployment({"sensorA": sensor(test_image), "sleeper": sleeper}), tmp_path)
    edge.start()
    first = wait_reported(hub, edge.device_id, all_running(["sensorA", "sleeper"]), 90, "modules running")
    wait_for(pid_file.exists, 60, "the process module to start")
    first_pid = int(pid_file.read_text())
    before = edge.inspect("sensorA")
    assert before["State"]["Running"]

    edge.proc.send_signal(signal.SIGTERM)
    edge.proc.wait(30)
    after_stop = edge.inspect("sensorA")
    assert after_stop is not None and after_stop["State"]["Running"], "the container stopped with the daemon"
    assert after_stop["Id"] == before["Id"]
    assert not alive(first_pid), f"process module {first_pid} still running after SIGTERM to the edge daemon"

    pid_file.unlink()
    edge.start()
    wait_for(pid_file.exists, 60, "the process module to run again after the restart")
    assert int(pid_file.read_text()) != first_pid
    wait_reported(hub, edge.device_id,
                          all_running(["sensorA", "sleeper"]), 90, "modules running after the restart")
    # Give the agent time to (wrongly) act on what it found before looking.
    time.sleep(3)
    adopted = edge.inspect("sensorA")
    assert adopted["Id"] == before["Id"], "the container was recreated instead of adopted"
    assert adopted["State"]["Running"]
    assert adopted["State"]["StartedAt"] == before["State"]["StartedAt"], "the container was restarted"
    assert adopted["RestartCount"] == before["RestartCount"]
    reported = reported_modules(hub, edge.device_id)
    assert reported["sensorA"].get("restartCount", 0) == first["modules"]["sensorA"].get("restartCount", 0), reported
    assert reported["sensorA"]["runtimeStatus"] == "running"


CHATTY_SH = ('echo "<6> started in a container"; echo "<3> an error on stderr" >&2; i=0; '
             'while true; do i=$((i+1)); if [ $((i % 4)) -eq 0 ]; then echo "<4> warn $i"; '
             'else echo "<6> tick $i"; fi; sleep 0.05; done')


def test_get_module_logs_of_a_container_module_with_tail_and_regex(hub, edge, test_image, tmp_path):
    from test_edge_agent_methods import invoke, logs_request, text_lines, wait_connected
    chatty = sensor(test_image, settings={"image": test_image,
                                          "createOptions": json.dumps({"Cmd": ["sh", "-c", CHATTY_SH]})})
    deploy(hub, edge.device_id, deployment({"chatty": chatty}), tmp_path)
    edge.start()
    wait_reported(hub, edge.device_id, all_running(["chatty"]), 90, "chatty running")
    wait_connected(hub, edge)
    wait_for(lambda: " tick 41" in docker("logs", edge.container("chatty")).stdout, 60, "40 lines in the container log")

    status, answer = invoke(hub, edge, "GetModuleLogs", logs_request({"tail": 3}))
    assert status == 200, answer
    lines = text_lines(answer, "chatty")
    assert len(lines) == 3 and all(" tick " in line or " warn " in line for line in lines), lines

    # regex over the whole log: stdout and stderr alike.
    _, answer = invoke(hub, edge, "GetModuleLogs", logs_request({"regex": "started|error"}))
    lines = text_lines(answer, "chatty")
    assert any("started in a container" in line for line in lines), lines
    assert any("an error on stderr" in line for line in lines), lines
    assert all("started" in line or "error" in line for line in lines), lines

    # tail and regex together: at most the tail, every line matching.
    status, answer = invoke(hub, edge, "GetModuleLogs", logs_request({"tail": 20, "regex": "warn [0-9]+"},
                                                                     encoding="gzip"))
    assert status == 200 and "payloadBytes" in answer[0], answer
    lines = text_lines(answer, "chatty")
    assert 1 <= len(lines) <= 20 and all(" warn " in line for line in lines), lines

    _, answer = invoke(hub, edge, "GetModuleLogs", logs_request({"tail": 2}, content_type="json"))
    messages = json.loads(answer[0]["payload"])
    assert [m["moduleId"] for m in messages] == ["chatty", "chatty"], messages
    assert all(m["timeStamp"] for m in messages), messages
