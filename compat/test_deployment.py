"""Deployments: applyConfigurationContent through IoTHubConfigurationManager and `outpost deploy`
(AZURE-COMPAT §4 "applyConfigurationContent semantics", §5.1)."""

from __future__ import annotations

import copy
import json
import queue

import pytest
from azure.iot.hub.models import ConfigurationContent, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from harness import set_handler

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    # SQLite and PostgreSQL; not the replicas (storage and validation, no delivery between replicas: kept out
    # to hold the run time down, see README.md)
    pytest.mark.hub_setups("sqlite", "postgres"),
]

FILTER_CREATE_OPTIONS = json.dumps({"HostConfig": {"PortBindings": {"8080/tcp": [{"HostPort": "8080"}]}}})

MANIFEST = {
    "modulesContent": {
        "$edgeAgent": {
            "properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {
                    "type": "docker",
                    "settings": {"minDockerVersion": "v1.25", "loggingOptions": "", "registryCredentials": {}},
                },
                "systemModules": {
                    "edgeAgent": {
                        "type": "docker",
                        "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5", "createOptions": "{}"},
                    },
                    "edgeHub": {
                        "type": "docker",
                        "status": "running",
                        "restartPolicy": "always",
                        "startupOrder": 0,
                        "settings": {
                            "image": "mcr.microsoft.com/azureiotedge-hub:1.5",
                            "createOptions": json.dumps({"HostConfig": {"PortBindings": {
                                "443/tcp": [{"HostPort": "443"}], "8883/tcp": [{"HostPort": "8883"}]}}}),
                        },
                        "env": {"OptimizeForPerformance": {"value": "false"}},
                    },
                },
                "modules": {
                    "filter": {
                        "version": "1.0",
                        "type": "docker",
                        "status": "running",
                        "restartPolicy": "always",
                        "imagePullPolicy": "on-create",
                        "startupOrder": 1,
                        "settings": {"image": "localhost:5000/filter:0.1", "createOptions": FILTER_CREATE_OPTIONS},
                        "env": {"THRESHOLD": {"value": "25"}},
                    }
                },
            }
        },
        "$edgeHub": {
            "properties.desired": {
                "schemaVersion": "1.1",
                "routes": {
                    "sensorToFilter": "FROM /messages/modules/sensor/outputs/temperatureOutput "
                                      "INTO BrokeredEndpoint(\"/modules/filter/inputs/input1\")",
                    "filterToUpstream": {"route": "FROM /messages/modules/filter/outputs/* INTO $upstream",
                                         "priority": 0, "timeToLiveSecs": 86400},
                },
                "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
            }
        },
        "filter": {"properties.desired": {"threshold": 25, "unit": {"name": "celsius"}}},
    }
}


def user_props(desired: dict) -> dict:
    return {k: v for k, v in desired.items() if not k.startswith("$")}


@pytest.fixture
def edge(registry):
    registry.create_device_with_sas("edge1", "", "", "enabled", iot_edge=True)
    return "edge1"


def apply(hub, device_id, modules_content):
    hub.configuration().apply_configuration_on_edge_device(
        device_id, ConfigurationContent(modules_content=modules_content))


def assert_deployed(registry, device_id, manifest=MANIFEST):
    content = manifest["modulesContent"]
    for module_id in ("$edgeAgent", "$edgeHub", "filter"):
        twin = registry.get_module_twin(device_id, module_id)
        assert user_props(twin.properties.desired) == content[module_id]["properties.desired"], module_id
        assert isinstance(twin.properties.desired["$version"], int)


def test_apply_configuration_writes_every_module_twin(hub, registry, edge):
    registry.create_module_with_sas(edge, "filter", None, "", "")
    registry.update_module_twin(edge, "filter", Twin(properties=TwinProperties(desired={"stale": True})), "*")
    before = registry.get_module_twin(edge, "filter").properties.desired["$version"]

    result = apply(hub, edge, copy.deepcopy(MANIFEST["modulesContent"]))

    assert result is None
    assert_deployed(registry, edge)
    filter_desired = registry.get_module_twin(edge, "filter").properties.desired
    assert "stale" not in filter_desired, "a deployment replaces a module's desired properties"
    assert filter_desired["$version"] > before


def test_apply_configuration_before_the_module_identity_exists(hub, registry, edge):
    apply(hub, edge, copy.deepcopy(MANIFEST["modulesContent"]))
    # edgeAgent creates user module identities after it has read the deployment; their twins get its content
    registry.create_module_with_sas(edge, "filter", "IotEdge", "", "")
    assert_deployed(registry, edge)


def test_redeploy_bumps_versions_and_leaves_unlisted_modules_alone(hub, registry, edge):
    registry.create_module_with_sas(edge, "filter", None, "", "")
    registry.create_module_with_sas(edge, "other", None, "", "")
    registry.update_module_twin(edge, "other", Twin(properties=TwinProperties(desired={"mine": 1})), "*")
    apply(hub, edge, copy.deepcopy(MANIFEST["modulesContent"]))
    v1 = registry.get_module_twin(edge, "$edgeAgent").properties.desired["$version"]

    second = copy.deepcopy(MANIFEST)
    second["modulesContent"]["filter"]["properties.desired"] = {"threshold": 30}
    apply(hub, edge, second["modulesContent"])

    assert registry.get_module_twin(edge, "$edgeAgent").properties.desired["$version"] > v1
    assert user_props(registry.get_module_twin(edge, "filter").properties.desired) == {"threshold": 30}
    assert user_props(registry.get_module_twin(edge, "other").properties.desired) == {"mine": 1}


def test_edge_agent_connected_as_module_receives_the_deployment(hub, registry, edge, clients):
    agent_key = registry.get_module(edge, "$edgeAgent").authentication.symmetric_key.primary_key
    agent = clients.open(hub, edge, agent_key, module_id="$edgeAgent")
    patches: queue.Queue = queue.Queue()
    set_handler(agent, "on_twin_desired_properties_patch_received", patches.put)

    apply(hub, edge, copy.deepcopy(MANIFEST["modulesContent"]))

    patch = patches.get(timeout=10)
    assert patch["schemaVersion"] == "1.1"
    assert patch["modules"]["filter"]["settings"]["createOptions"] == FILTER_CREATE_OPTIONS
    assert "$version" in patch


@pytest.mark.parametrize("mutate", ["schema-2.0", "no-edgeHub", "no-edgeAgent", "not-an-object"])
def test_invalid_deployment_is_refused_and_changes_nothing(hub, registry, edge, mutate):
    registry.create_module_with_sas(edge, "filter", "IotEdge", "", "")
    apply(hub, edge, copy.deepcopy(MANIFEST["modulesContent"]))
    before = {m: registry.get_module_twin(edge, m).properties.desired for m in ("$edgeAgent", "$edgeHub")}

    bad = copy.deepcopy(MANIFEST["modulesContent"])
    if mutate == "schema-2.0":
        bad["$edgeAgent"]["properties.desired"]["schemaVersion"] = "2.0"
    elif mutate == "no-edgeHub":
        del bad["$edgeHub"]
    elif mutate == "no-edgeAgent":
        del bad["$edgeAgent"]
    else:
        bad["$edgeHub"]["properties.desired"] = "routes"
    if "filter" in bad:
        bad["filter"]["properties.desired"] = {"threshold": 99}

    with pytest.raises(HttpOperationError) as e:
        apply(hub, edge, bad)
    assert 400 <= e.value.response.status_code < 500
    after = {m: registry.get_module_twin(edge, m).properties.desired for m in ("$edgeAgent", "$edgeHub")}
    assert after == before
    assert user_props(registry.get_module_twin(edge, "filter").properties.desired)["threshold"] == 25


def test_deployment_to_a_non_edge_device_is_refused(hub, registry):
    registry.create_device_with_sas("leaf", "", "", "enabled")
    with pytest.raises(HttpOperationError) as e:
        apply(hub, "leaf", copy.deepcopy(MANIFEST["modulesContent"]))
    assert e.value.response.status_code == 400


def test_deployment_to_a_missing_device_is_404(hub, registry):
    with pytest.raises(HttpOperationError) as e:
        apply(hub, "nobody", copy.deepcopy(MANIFEST["modulesContent"]))
    assert e.value.response.status_code == 404


def test_outpost_deploy_applies_a_manifest_file(hub, registry, edge, tmp_path):
    registry.create_module_with_sas(edge, "filter", None, "", "")
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(MANIFEST, indent=2))

    hub.run_cli(["deploy", edge, str(path)])

    assert_deployed(registry, edge)


def test_outpost_deploy_accepts_the_content_wrapper(hub, registry, edge, tmp_path):
    # Azure CLI deployment files wrap modulesContent in "content" (AZURE-COMPAT §5, DeploymentManifest::from_json)
    registry.create_module_with_sas(edge, "filter", None, "", "")
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps({"content": MANIFEST}))
    hub.run_cli(["deploy", edge, str(path)])
    assert_deployed(registry, edge)


def test_outpost_deploy_refuses_a_bad_manifest(hub, registry, edge, tmp_path):
    bad = copy.deepcopy(MANIFEST)
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = "2.0"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    before = registry.get_module_twin(edge, "$edgeAgent").properties.desired
    cp = hub.run_cli(["deploy", edge, str(path)], check=False)
    assert cp.returncode != 0
    assert cp.stderr.strip(), "a refused deployment says why on stderr"
    assert registry.get_module_twin(edge, "$edgeAgent").properties.desired == before

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert hub.run_cli(["deploy", edge, str(garbage)], check=False).returncode != 0
