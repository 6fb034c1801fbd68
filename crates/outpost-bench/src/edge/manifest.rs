//! The deployment manifests the edge benchmarks apply: Azure IoT Edge's format, with process modules.

use serde_json::{json, Map, Value};

/// A process module running `path` with `args`.
pub fn process_module(path: &str, args: &[&str]) -> Value {
    json!({"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
           "settings": {"path": path, "args": args}})
}

/// A container module running `image`.
pub fn docker_module(image: &str) -> Value {
    json!({"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
           "settings": {"image": image, "createOptions": "{}"}})
}

/// The route from publisher `publisher`'s output `out1` to subscriber `subscriber`'s input `in1`.
pub fn bench_route(publisher: &str, subscriber: &str) -> String {
    format!("FROM /messages/modules/{publisher}/outputs/out1 INTO BrokeredEndpoint(\"/modules/{subscriber}/inputs/in1\")")
}

/// A manifest with these user modules and routes.
pub fn manifest(modules: &Map<String, Value>, routes: &Map<String, Value>) -> Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25", "loggingOptions": ""}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "outpost/agent:1", "createOptions": "{}"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                            "settings": {"image": "outpost/hub:1", "createOptions": "{}"}}},
            "modules": modules}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": routes,
                                            "storeAndForwardConfiguration": {"timeToLiveSecs": 86400}}}}})
}

/// The routes of the bench: publisher i to subscriber i mod M, the backlog sender and the filter to
/// `$upstream`, the sensor to the filter.
pub fn routes(publishers: &[String], subscribers: &[String], samples: bool) -> Map<String, Value> {
    let mut routes = Map::new();
    for (i, publisher) in publishers.iter().enumerate() {
        let subscriber = &subscribers[i % subscribers.len()];
        routes.insert(
            format!("bench{i}"),
            Value::String(bench_route(publisher, subscriber)),
        );
    }
    routes.insert(
        "backlog".into(),
        "FROM /messages/modules/backlog/* INTO $upstream".into(),
    );
    if samples {
        routes.insert(
            "sensorToFilter".into(),
            "FROM /messages/modules/sensor/outputs/temperatureOutput INTO BrokeredEndpoint(\"/modules/filter/inputs/input1\")".into(),
        );
        routes.insert(
            "filterToUpstream".into(),
            "FROM /messages/modules/filter/outputs/output1 INTO $upstream".into(),
        );
    }
    routes
}

/// The `runtimeStatus` `$edgeAgent` reports for `module`, from its twin.
pub fn reported_status<'a>(agent_twin: &'a Value, module: &str) -> Option<&'a str> {
    agent_twin
        .pointer("/properties/reported/modules")?
        .get(module)?
        .get("runtimeStatus")?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_are_routed_round_robin_to_subscribers() {
        let publishers = vec!["pub1".to_owned(), "pub2".to_owned(), "pub3".to_owned()];
        let subscribers = vec!["sub1".to_owned(), "sub2".to_owned()];
        let routes = routes(&publishers, &subscribers, false);
        assert_eq!(routes["bench2"], Value::String(bench_route("pub3", "sub1")));
        assert!(routes["bench1"]
            .as_str()
            .unwrap()
            .contains("/modules/sub2/inputs/in1"));
        assert!(!routes.contains_key("sensorToFilter"));
    }

    #[test]
    fn a_manifest_carries_modules_and_routes() {
        let mut modules = Map::new();
        modules.insert("sleeper".into(), process_module("/bin/sleep", &["3600"]));
        let m = manifest(&modules, &routes(&["p".into()], &["s".into()], true));
        let agent = &m["modulesContent"]["$edgeAgent"]["properties.desired"];
        assert_eq!(agent["modules"]["sleeper"]["settings"]["args"][0], "3600");
        let hub = &m["modulesContent"]["$edgeHub"]["properties.desired"];
        assert!(hub["routes"]["filterToUpstream"]
            .as_str()
            .unwrap()
            .ends_with("$upstream"));
    }

    #[test]
    fn the_reported_status_is_read_from_the_agent_twin() {
        let twin = json!({"properties": {"reported": {"modules": {"sleeper": {"runtimeStatus": "running"}}}}});
        assert_eq!(reported_status(&twin, "sleeper"), Some("running"));
        assert_eq!(reported_status(&twin, "other"), None);
    }
}
