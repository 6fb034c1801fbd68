"""Automatic deployments reaching real edge daemons (issue 11): `outpost edge run` (process runtime) under a hub,
with deployments made through the unmodified azure-iot-hub `IoTHubConfigurationManager`. A device gets the
highest-priority base deployment its tags select, switches when a higher one appears or its tags change, and
runs a layered deployment's module on top; what the hub evaluates shows as modules the daemon actually runs.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from azure.iot.hub.models import Configuration, ConfigurationContent, Twin

from edge_harness import Edge, deployment, wait_reported

pytestmark = pytest.mark.hub_setups("sqlite", "postgres")

SLEEPER = textwrap.dedent("""\
    import time
    while True:
        time.sleep(1)
""")


def sleeper(tmp_path: Path) -> dict:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    return {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always", "startupOrder": 0,
            "settings": {"path": sys.executable, "args": [str(script)]}}


def base(config_id: str, modules: dict, condition: str, priority: int) -> Configuration:
    return Configuration(id=config_id, schema_version="1.0", labels={}, priority=priority,
                         target_condition=condition,
                         content=ConfigurationContent(modules_content=deployment(modules)["modulesContent"]))


def layered(config_id: str, name: str, module: dict, condition: str, priority: int) -> Configuration:
    content = {"$edgeAgent": {f"properties.desired.modules.{name}": module}}
    return Configuration(id=config_id, schema_version="1.0", labels={}, priority=priority,
                         target_condition=condition, content=ConfigurationContent(modules_content=content))


def running_exactly(names: set[str]):
    def check(reported):
        modules = reported.get("modules") or {}
        running = {n for n, m in modules.items() if (m or {}).get("runtimeStatus") == "running"}
        return running == names
    return check


def set_tags(hub, device_id: str, tags: dict) -> None:
    registry = hub.registry()
    twin = registry.get_twin(device_id)
    registry.update_twin(device_id, Twin(tags=tags), twin.etag)


@pytest.fixture
def edges(hub, tmp_path, loopback):
    daemons = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        daemons.append(Edge(hub, f"fleet-{name}-{uuid.uuid4().hex[:6]}", work, "process", "unused", loopback.next()))
    yield daemons
    for daemon in daemons:
        daemon.cleanup()


def test_edge_daemons_follow_automatic_deployments_by_tags_priority_and_layers(hub, edges, tmp_path):
    a, b = edges
    module = sleeper(tmp_path)
    set_tags(hub, a.device_id, {"env": "prod"})
    set_tags(hub, b.device_id, {"env": "dev"})
    configs = hub.configuration()
    configs.create_configuration(base("prod-v1", {"alpha": module}, "tags.env = 'prod'", 10))
    a.start()
    b.start()
    wait_reported(hub, a.device_id, running_exactly({"alpha"}), 90, "device a to run the prod deployment")

    # A tag change brings b into the target.
    set_tags(hub, b.device_id, {"env": "prod"})
    wait_reported(hub, b.device_id, running_exactly({"alpha"}), 90, "device b to run prod after its tag change")

    # A higher-priority base deployment replaces the first on every device it targets.
    configs.create_configuration(base("prod-v2", {"beta": module}, "tags.env = 'prod'", 20))
    for edge in (a, b):
        wait_reported(hub, edge.device_id, running_exactly({"beta"}), 90, f"{edge.device_id} to switch to prod-v2")

    # A layered deployment adds its module on top of whatever base each device runs.
    configs.create_configuration(layered("monitor", "mon", module, "tags.env = 'prod'", 5))
    for edge in (a, b):
        wait_reported(hub, edge.device_id, running_exactly({"beta", "mon"}), 90,
                      f"{edge.device_id} to run the layered module on top")

    # Device a leaves the prod target for another base deployment: it loses prod's modules and the layer.
    configs.create_configuration(base("canary", {"gamma": module}, "tags.env = 'canary'", 1))
    set_tags(hub, a.device_id, {"env": "canary"})
    wait_reported(hub, a.device_id, running_exactly({"gamma"}), 90, "device a to switch to the canary deployment")
    wait_reported(hub, b.device_id, running_exactly({"beta", "mon"}), 30, "device b to keep prod-v2 with the layer")

    # Deleting the winning base deployment falls back to the next one by priority.
    configs.delete_configuration("prod-v2")
    wait_reported(hub, b.device_id, running_exactly({"alpha", "mon"}), 90, "device b to fall back to prod-v1")

    stored = configs.get_configuration("prod-v1")
    assert stored.system_metrics.results["targetedCount"] == 1, stored.system_metrics.results
