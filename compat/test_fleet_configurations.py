"""Automatic configurations and deployments (issue 11 item 4): `/configurations` through the unmodified
IoTHubConfigurationManager, a device configuration delivered to a connected azure-iot-device client as its tags
make it match and stop matching, an automatic edge deployment with a layer on top, and `outpost deployment`."""

from __future__ import annotations

import copy
import json
import queue
import sys

import pytest
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationQueriesTestInput,
    Twin,
)
from msrest.exceptions import HttpOperationError

from harness import API_VERSION, set_handler, wait_for
from test_deployment import MANIFEST

pytestmark = [
    pytest.mark.docker_free,
    pytest.mark.hub_setups("sqlite", "postgres"),
]

# The hub evaluates within DEBOUNCE (0.25 s) of a change; a generous bound for slow CI machines.
EVALUATION_SECS = 15


def device_configuration(config_id: str, condition: str, content: dict, priority: int = 0, metrics=None):
    return Configuration(
        id=config_id,
        schema_version="1.0",
        labels={"team": "fleet"},
        content=ConfigurationContent(device_content=content),
        target_condition=condition,
        priority=priority,
        metrics={"queries": metrics or {}},
    )


def set_tags(registry, device_id: str, tags: dict):
    twin = registry.get_twin(device_id)
    registry.update_twin(device_id, Twin(tags=tags), twin.etag)


def test_configuration_crud_through_the_sdk(hub, registry):
    manager = hub.configuration()
    registry.create_device_with_sas("d1", "", "", "enabled")
    set_tags(registry, "d1", {"env": "test"})

    created = manager.create_configuration(device_configuration(
        "cfg-a", "tags.env = 'test'", {"properties.desired.interval": 5}, priority=3,
        metrics={"tested": "SELECT deviceId FROM devices WHERE tags.env = 'test'"}))
    assert created.id == "cfg-a"
    assert created.priority == 3
    assert created.etag
    assert created.created_time_utc is not None
    assert created.labels == {"team": "fleet"}

    with pytest.raises(HttpOperationError) as e:
        manager.create_configuration(device_configuration("cfg-a", "*", {"properties.desired.interval": 5}))
    assert e.value.response.status_code == 409

    got = wait_for(lambda: (c := manager.get_configuration("cfg-a")).system_metrics.results.get("appliedCount")
                   and c, EVALUATION_SECS, "the configuration applied")
    assert got.target_condition == "tags.env = 'test'"
    assert got.content.device_content == {"properties.desired.interval": 5}
    assert got.system_metrics.results["targetedCount"] == 1
    assert got.metrics.results == {"tested": 1}
    assert "targetedCount" in got.system_metrics.queries

    manager.create_configuration(device_configuration("cfg-b", "*", {"properties.desired.other": 1}))
    listed = manager.get_configurations()
    assert sorted(c.id for c in listed) == ["cfg-a", "cfg-b"]
    assert len(manager.get_configurations(1)) == 1

    updated = copy.copy(got)
    updated.priority = 7
    with pytest.raises(HttpOperationError) as e:
        manager.update_configuration(updated, '"stale"')
    assert e.value.response.status_code == 412
    replaced = manager.update_configuration(updated, got.etag)
    assert replaced.priority == 7
    assert replaced.etag != got.etag

    with pytest.raises(HttpOperationError) as e:
        manager.delete_configuration("cfg-a", got.etag)
    assert e.value.response.status_code == 412
    manager.delete_configuration("cfg-a", replaced.etag)
    manager.delete_configuration("cfg-b")
    with pytest.raises(HttpOperationError) as e:
        manager.get_configuration("cfg-a")
    assert e.value.response.status_code == 404
    assert manager.get_configurations() == []


@pytest.mark.parametrize("bad", ["condition", "content", "metric"])
def test_invalid_configuration_is_400_and_stores_nothing(hub, bad):
    manager = hub.configuration()
    condition, content, metrics = "tags.env = 'test'", {"properties.desired.x": 1}, {}
    if bad == "condition":
        condition = "tags.env = = 'test'"
    elif bad == "content":
        content = {"tags.x": 1}
    else:
        metrics = {"m": "SELECT * FROM nowhere"}
    with pytest.raises(HttpOperationError) as e:
        manager.create_configuration(device_configuration("bad", condition, content, metrics=metrics))
    assert e.value.response.status_code == 400
    assert manager.get_configurations() == []


def test_the_configuration_past_the_hub_limit_is_429_and_stores_nothing(hub):
    manager = hub.configuration()
    content = {"properties.desired.x": 1}
    for n in range(100):  # IoT Hub's limit of configurations per hub
        manager.create_configuration(device_configuration(f"cfg-{n}", "tags.env = 'test'", content, priority=n))
    with pytest.raises(HttpOperationError) as e:
        manager.create_configuration(device_configuration("cfg-100", "tags.env = 'test'", content))
    assert e.value.response.status_code == 429
    assert e.value.response.json()["Message"].startswith("ErrorCode:ThrottlingException;")
    listed = manager.get_configurations(max_count=1000)
    assert len(listed) == 100
    assert "cfg-100" not in {c.id for c in listed}
    manager.delete_configuration("cfg-0")
    assert manager.create_configuration(device_configuration("cfg-100", "tags.env = 'test'", content)).id == "cfg-100"


def test_configuration_queries_are_tested(hub):
    manager = hub.configuration()
    good = manager.test_configuration_queries(ConfigurationQueriesTestInput(
        target_condition="tags.env = 'test' AND properties.reported.x > 1",
        custom_metric_queries={"ok": "SELECT deviceId FROM devices WHERE tags.a = 1"}))
    assert not good.target_condition_error
    assert not good.custom_metric_query_errors["ok"]
    bad = manager.test_configuration_queries(ConfigurationQueriesTestInput(
        target_condition="tags.env = ", custom_metric_queries={"broken": "SELECT deviceId FROM"}))
    assert bad.target_condition_error
    assert bad.custom_metric_query_errors["broken"]


def test_apply_configuration_on_edge_device_is_still_manual(hub, registry):
    registry.create_device_with_sas("edge1", "", "", "enabled", iot_edge=True)
    hub.configuration().apply_configuration_on_edge_device(
        "edge1", ConfigurationContent(modules_content=copy.deepcopy(MANIFEST["modulesContent"])))
    desired = registry.get_module_twin("edge1", "$edgeAgent").properties.desired
    assert desired["modules"]["filter"]["settings"]["image"] == "localhost:5000/filter:0.1"


def test_device_configuration_follows_the_tags_of_a_connected_device(hub, registry, clients):
    registry.create_device_with_sas("sensor", "", "", "enabled")
    key = registry.get_device("sensor").authentication.symmetric_key.primary_key
    client = clients.open(hub, "sensor", key)
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)

    hub.configuration().create_configuration(device_configuration(
        "telemetry", "tags.site = 'north'", {"properties.desired.telemetry.interval": 30}))
    set_tags(registry, "sensor", {"site": "north"})

    patch = patches.get(timeout=EVALUATION_SECS)
    assert patch["telemetry"] == {"interval": 30}
    twin = registry.get_twin("sensor")
    assert twin.properties.desired["telemetry"] == {"interval": 30}
    raw = hub.rest_session().get(f"{hub.base_url}/twins/sensor?api-version={API_VERSION}",
                                 timeout=10).json()
    assert raw["configurations"] == {"telemetry": {"status": "Applied"}}

    set_tags(registry, "sensor", {"site": "south"})
    patch = patches.get(timeout=EVALUATION_SECS)
    assert patch["telemetry"] == {"interval": None}
    desired = registry.get_twin("sensor").properties.desired
    assert "interval" not in desired.get("telemetry", {})


def test_automatic_edge_deployment_with_a_layer(hub, registry):
    registry.create_device_with_sas("edge-n", "", "", "enabled", iot_edge=True)
    registry.create_device_with_sas("edge-s", "", "", "enabled", iot_edge=True)
    set_tags(registry, "edge-n", {"site": "north"})
    set_tags(registry, "edge-s", {"site": "south"})
    manager = hub.configuration()
    base = Configuration(id="base", schema_version="1.0", target_condition="tags.site = 'north'", priority=10,
                         content=ConfigurationContent(modules_content=copy.deepcopy(MANIFEST["modulesContent"])))
    manager.create_configuration(base)
    layer = {
        "$edgeAgent": {"properties.desired.modules.extra": {
            "version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
            "settings": {"image": "localhost:5000/extra:1", "createOptions": "{}"}}},
        "$edgeHub": {"properties.desired.routes.extra": "FROM /messages/modules/extra/* INTO $upstream"},
        "extra": {"properties.desired": {"level": 3}},
    }
    manager.create_configuration(Configuration(
        id="layer", schema_version="1.0", target_condition="tags.site = 'north'", priority=20,
        content=ConfigurationContent(modules_content=layer)))

    def agent_modules():
        return registry.get_module_twin("edge-n", "$edgeAgent").properties.desired.get("modules", {})

    modules = wait_for(lambda: "extra" in agent_modules() and agent_modules(), EVALUATION_SECS, "the layer")
    assert modules["filter"]["settings"]["image"] == "localhost:5000/filter:0.1"
    routes = registry.get_module_twin("edge-n", "$edgeHub").properties.desired["routes"]
    assert "extra" in routes and "filterToUpstream" in routes
    assert "modules" not in registry.get_module_twin("edge-s", "$edgeAgent").properties.desired
    # the module identity comes later (edgeAgent creates it): its twin starts from the deployment
    registry.create_module_with_sas("edge-n", "extra", "IotEdge", "", "")
    assert registry.get_module_twin("edge-n", "extra").properties.desired["level"] == 3

    shown = manager.get_configuration("layer")
    assert shown.system_metrics.results["targetedCount"] == 1
    assert shown.system_metrics.results["appliedCount"] == 1
    assert shown.system_metrics.results["reportedSuccessfulCount"] == 0


def test_outpost_deployment_commands(hub, registry, tmp_path):
    registry.create_device_with_sas("edge1", "", "", "enabled", iot_edge=True)
    set_tags(registry, "edge1", {"ring": 1})
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(MANIFEST))
    created = hub.cli_json("deployment", "create", "ring1", "--content", str(path), "--target-condition",
                           "tags.ring = 1", "--priority", "5", "--metric",
                           "ring=SELECT deviceId FROM devices WHERE tags.ring = 1")
    assert created["id"] == "ring1"
    assert created["priority"] == 5
    wait_for(lambda: registry.get_module_twin("edge1", "$edgeAgent").properties.desired.get("modules"),
             EVALUATION_SECS, "the deployment")
    shown = hub.cli_json("deployment", "show", "ring1")
    assert shown["metrics"]["results"] == {"ring": 1}
    assert [d["id"] for d in hub.cli_json("deployment", "list")] == ["ring1"]
    layered_without_flag = hub.run_cli(["deployment", "create", "bad", "--content", str(path),
                                        "--target-condition", "*", "--layered"], check=False)
    assert layered_without_flag.returncode != 0
    hub.run_cli(["deployment", "delete", "ring1"])
    assert hub.cli_json("deployment", "list") == []


def sleeper(tmp_path, name: str) -> tuple[dict, "Path"]:
    from test_edge_shutdown import SLEEPER
    script = tmp_path / f"{name}.py"
    script.write_text(SLEEPER)
    pid_file = tmp_path / f"{name}.pid"
    return ({"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
             "startupOrder": 0, "settings": {"path": sys.executable, "args": [str(script), str(pid_file)]}},
            pid_file)


def test_an_edge_daemon_runs_the_deployment_its_tags_select_with_a_layered_module(hub, registry, edge, tmp_path):
    from edge_harness import deployment, wait_reported
    base_module, base_pid = sleeper(tmp_path, "basemod")
    layer_module, layer_pid = sleeper(tmp_path, "layermod")
    manager = hub.configuration()
    manager.create_configuration(Configuration(
        id="fleet-base", schema_version="1.0", target_condition="tags.fleet = 'edge'", priority=1,
        content=ConfigurationContent(modules_content=deployment({"basemod": base_module})["modulesContent"])))
    manager.create_configuration(Configuration(
        id="fleet-layer", schema_version="1.0", target_condition="tags.fleet = 'edge'", priority=2,
        content=ConfigurationContent(modules_content={
            "$edgeAgent": {"properties.desired.modules.layermod": layer_module}})))
    set_tags(registry, edge.device_id, {"fleet": "edge"})
    edge.start()

    def running(reported):
        modules = reported.get("modules") or {}
        return all((modules.get(n) or {}).get("runtimeStatus") == "running" for n in ("basemod", "layermod"))

    wait_reported(hub, edge.device_id, running, 90, "the base and the layered module running")
    wait_for(base_pid.exists, 30, "the base deployment's process")
    wait_for(layer_pid.exists, 30, "the layered deployment's process")
    shown = wait_for(lambda: (c := manager.get_configuration("fleet-base"))
                     .system_metrics.results.get("reportedSuccessfulCount") and c, 60,
                     "the edge agent reporting the deployment applied")
    assert shown.system_metrics.results["appliedCount"] == 1
    assert shown.system_metrics.results["reportedFailedCount"] == 0
