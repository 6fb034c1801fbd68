//! `ModuleClient::from_environment` end to end, except for the real edge daemon: the `IOTEDGE_*` variables,
//! a TEST DOUBLE of the workload API on a Unix socket (it signs with the module's key, as aziot-edged does,
//! until Outpost's edge runtime serves the real one), the test-only gateway in front of a real hub; and the
//! `EdgeHubConnectionString` fallback. Method invocation goes to a test double of the edge hub's HTTPS
//! method endpoint, which the edge hub issue builds.
//!
//! These tests change the process environment, so they run one at a time (`ENVIRONMENT`).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outpost_sdk::{
    ClientError, ClientOptions, MethodInvocation, MethodTarget, ModuleClient, WorkloadError,
    RUNTIME_VARIABLES,
};
use serde_json::{json, Value};
use support::gateway::TestGateway;
use support::{within, TestHub};

/// The tests of this file take turns with the process environment.
static ENVIRONMENT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const API_VERSION: &str = "2022-08-03";

/// What the workload double saw.
#[derive(Default)]
struct WorkloadLog {
    trust_bundles: usize,
    /// (path, decoded data) of each sign call.
    signs: Vec<(String, String)>,
}

/// A TEST DOUBLE of the edge runtime's workload API: trust bundle and HMAC signatures with one module key.
struct WorkloadDouble {
    socket: PathBuf,
    log: Arc<Mutex<WorkloadLog>>,
}

impl WorkloadDouble {
    fn start(dir: &Path, ca_pem: String, key: String, refuse_signing: bool) -> Self {
        let socket = dir.join("workload.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let log = Arc::new(Mutex::new(WorkloadLog::default()));
        let state = (Arc::clone(&log), Arc::new(ca_pem), Arc::new(key));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, ca_pem, key) = state.clone();
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (log, ca_pem, key) = (log.clone(), ca_pem.clone(), key.clone());
                    async move {
                        let path = request.uri().path().to_owned();
                        let query = request.uri().query().unwrap_or_default().to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let (status, answer) =
                            if !query.contains(&format!("api-version={API_VERSION}")) {
                                (400, json!({"message": "api-version not specified"}))
                            } else if path == "/trust-bundle" {
                                log.lock().unwrap().trust_bundles += 1;
                                (200, json!({"certificate": *ca_pem}))
                            } else if path.ends_with("/sign") && refuse_signing {
                                (403, json!({"message": "forbidden"}))
                            } else if path.ends_with("/sign") {
                                let request: Value = serde_json::from_slice(&body).unwrap();
                                let data = base64::engine::general_purpose::STANDARD
                                    .decode(request["data"].as_str().unwrap())
                                    .unwrap();
                                log.lock()
                                    .unwrap()
                                    .signs
                                    .push((path, String::from_utf8(data.clone()).unwrap()));
                                (
                                    200,
                                    json!({"digest": outpost_core::sign(&key, &data).unwrap()}),
                                )
                            } else {
                                (404, json!({"message": "not found"}))
                            };
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(answer.to_string())))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { socket, log }
    }

    fn sign_calls(&self) -> usize {
        self.log.lock().unwrap().signs.len()
    }
}

/// A module identity in the hub, and a gateway in front of it.
struct Edge {
    hub: TestHub,
    gateway: TestGateway,
    key: String,
    generation_id: String,
}

async fn edge() -> Edge {
    let hub = TestHub::start().await;
    let gateway = TestGateway::start(hub.hub(), &hub.config.data_dir).await;
    hub.create_module("edge-1", "filter").await;
    let record = hub
        .hub()
        .registry()
        .module("edge-1", "filter")
        .await
        .unwrap();
    Edge {
        key: record.credentials.primary_key.clone(),
        generation_id: record.generation_id.clone(),
        hub,
        gateway,
    }
}

/// Sets exactly these variables among the ones the SDK reads.
fn set_environment(vars: &[(&str, String)]) {
    for name in RUNTIME_VARIABLES
        .iter()
        .chain(&["EdgeHubConnectionString", "EdgeModuleCACertificateFile"])
    {
        std::env::remove_var(name);
    }
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
}

fn runtime_environment(edge: &Edge, workload: &WorkloadDouble) -> Vec<(&'static str, String)> {
    vec![
        ("IOTEDGE_IOTHUBHOSTNAME", edge.hub.host().to_owned()),
        ("IOTEDGE_DEVICEID", "edge-1".into()),
        ("IOTEDGE_MODULEID", "filter".into()),
        ("IOTEDGE_GATEWAYHOSTNAME", edge.gateway.ip.to_string()),
        ("IOTEDGE_MODULEGENERATIONID", edge.generation_id.clone()),
        (
            "IOTEDGE_WORKLOADURI",
            format!("unix://{}", workload.socket.display()),
        ),
        ("IOTEDGE_APIVERSION", API_VERSION.into()),
    ]
}

#[tokio::test]
async fn a_module_connects_from_the_runtime_environment_with_signatures_from_the_workload_api() {
    let _turn = ENVIRONMENT.lock().await;
    let edge = edge().await;
    let workload = WorkloadDouble::start(
        edge.hub.dir.path(),
        edge.hub.ca_pem.clone(),
        edge.key.clone(),
        false,
    );
    set_environment(&runtime_environment(&edge, &workload));

    // No CA given: the trust bundle of the workload API is what the gateway's certificate is checked against.
    let client = ModuleClient::from_environment().await.unwrap();
    assert_eq!(
        (client.device_id(), client.module_id()),
        ("edge-1", "filter")
    );
    client
        .patch_reported(json!({"from": "environment"}))
        .await
        .unwrap();
    assert_eq!(
        edge.hub.reported("edge-1", Some("filter")).await["from"],
        "environment"
    );

    let log = workload.log.lock().unwrap();
    assert_eq!(log.trust_bundles, 1);
    assert_eq!(log.signs.len(), 1);
    let (path, data) = &log.signs[0];
    assert_eq!(
        path,
        &format!("/modules/filter/genid/{}/sign", edge.generation_id)
    );
    let resource = format!(
        "{}%2Fdevices%2Fedge-1%2Fmodules%2Ffilter\n",
        edge.hub.host()
    );
    assert!(data.starts_with(&resource), "{data:?}");
}

#[tokio::test]
async fn the_token_is_signed_again_by_the_workload_api_when_it_is_renewed() {
    let _turn = ENVIRONMENT.lock().await;
    let edge = edge().await;
    let workload = WorkloadDouble::start(
        edge.hub.dir.path(),
        edge.hub.ca_pem.clone(),
        edge.key.clone(),
        false,
    );
    set_environment(&runtime_environment(&edge, &workload));
    let options = ClientOptions {
        token_ttl: Duration::from_secs(4),
        ..ClientOptions::default()
    };
    let client = ModuleClient::from_environment_with(options).await.unwrap();
    within("a renewal", async {
        while workload.sign_calls() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    client
        .patch_reported(json!({"renewed": true}))
        .await
        .unwrap();
    assert_eq!(workload.log.lock().unwrap().trust_bundles, 1);
}

#[tokio::test]
async fn a_workload_api_that_refuses_to_sign_is_a_typed_error() {
    let _turn = ENVIRONMENT.lock().await;
    let edge = edge().await;
    let workload = WorkloadDouble::start(
        edge.hub.dir.path(),
        edge.hub.ca_pem.clone(),
        edge.key.clone(),
        true,
    );
    set_environment(&runtime_environment(&edge, &workload));
    let error = within("a refusal", ModuleClient::from_environment())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Workload(WorkloadError::Status { status: 403, .. })
        ),
        "{error}"
    );
}

#[tokio::test]
async fn without_a_runtime_the_module_uses_the_edge_hub_connection_string_and_ca_file() {
    let _turn = ENVIRONMENT.lock().await;
    let edge = edge().await;
    let connection_string = format!(
        "HostName={};GatewayHostName={};DeviceId=edge-1;ModuleId=filter;SharedAccessKey={}",
        edge.hub.host(),
        edge.gateway.ip,
        edge.key
    );
    set_environment(&[
        ("IOTEDGE_DEVICEID", "only-one-of-seven".into()),
        ("EdgeHubConnectionString", connection_string),
        (
            "EdgeModuleCACertificateFile",
            edge.hub.ca_path().display().to_string(),
        ),
    ]);
    let client = ModuleClient::from_environment().await.unwrap();
    client
        .patch_reported(json!({"from": "fallback"}))
        .await
        .unwrap();
    assert_eq!(
        edge.hub.reported("edge-1", Some("filter")).await["from"],
        "fallback"
    );

    set_environment(&[]);
    let error = ModuleClient::from_environment().await.unwrap_err();
    assert!(matches!(error, ClientError::Configuration(_)), "{error}");
}

/// What the method endpoint double saw: (path and query, headers, body).
type MethodLog = Arc<Mutex<Vec<(String, HashMap<String, String>, Value)>>>;

/// A TEST DOUBLE of the edge hub's HTTPS method endpoint (AZURE-COMPAT §1.6): it answers for target module
/// `sensor` and says 404 for any other.
async fn method_endpoint(ip: std::net::IpAddr, data_dir: &Path) -> (u16, MethodLog) {
    let ca = outpost_pki::CertificateAuthority::load_or_create(data_dir, "Outpost hub CA").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_tls_config(&ip.to_string()).unwrap());
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: MethodLog = Arc::default();
    let seen = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let seen = Arc::clone(&seen);
                async move {
                    let uri = request.uri().to_string();
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                        .collect();
                    let body: Value =
                        serde_json::from_slice(&request.into_body().collect().await?.to_bytes())
                            .unwrap();
                    let (status, answer) = if uri.contains("/modules/sensor/") {
                        (
                            200,
                            json!({"status": 201, "payload": {"reset": body["payload"].clone()}}),
                        )
                    } else {
                        (404, json!({"message": "the target is not connected"}))
                    };
                    seen.lock().unwrap().push((uri, headers, body));
                    Ok::<_, hyper::Error>(
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(answer.to_string())))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service),
            );
        }
    });
    (port, log)
}

#[tokio::test]
async fn a_module_invokes_a_method_on_another_module_through_the_gateway_over_https() {
    let _turn = ENVIRONMENT.lock().await;
    let edge = edge().await;
    let workload = WorkloadDouble::start(
        edge.hub.dir.path(),
        edge.hub.ca_pem.clone(),
        edge.key.clone(),
        false,
    );
    set_environment(&runtime_environment(&edge, &workload));
    let (https_port, log) = method_endpoint(edge.gateway.ip, &edge.hub.config.data_dir).await;
    let options = ClientOptions {
        https_port,
        ..ClientOptions::default()
    };
    let client = ModuleClient::from_environment_with(options).await.unwrap();

    let result = client
        .invoke_method(
            MethodTarget::module("edge-1", "sensor"),
            MethodInvocation::new("reset", json!({"hard": false}))
                .with_response_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(result.status, 201);
    assert_eq!(result.payload, json!({"reset": {"hard": false}}));
    {
        let log = log.lock().unwrap();
        let (uri, headers, body) = &log[0];
        assert_eq!(
            uri,
            "/twins/edge-1/modules/sensor/methods?api-version=2019-10-01"
        );
        assert_eq!(headers["x-ms-edge-moduleid"], "edge-1/filter");
        assert_eq!(headers["host"], edge.gateway.ip.to_string());
        let token = outpost_core::SasToken::parse(&headers["authorization"]).unwrap();
        token
            .verify(&[edge.key.as_str()], token.expiry - 3600)
            .unwrap();
        assert_eq!(token.scope().unwrap().module.as_deref(), Some("filter"));
        assert_eq!(
            body,
            &json!({"methodName": "reset", "payload": {"hard": false}, "responseTimeoutInSeconds": 5})
        );
    }

    let missing = client
        .invoke_method(
            MethodTarget::module("edge-1", "absent"),
            MethodInvocation::new("reset", Value::Null),
        )
        .await
        .unwrap_err();
    assert!(matches!(missing, ClientError::NotFound(_)), "{missing}");

    // Without a gateway there is nobody to send the call to.
    let direct = ModuleClient::from_connection_string(
        &format!(
            "HostName={};DeviceId=edge-1;ModuleId=filter;SharedAccessKey={}",
            edge.hub.host(),
            edge.key
        ),
        edge.hub.options(),
    )
    .await
    .unwrap();
    let unsupported = direct
        .invoke_method(
            MethodTarget::device("x"),
            MethodInvocation::new("m", Value::Null),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(unsupported, ClientError::NotSupported(_)),
        "{unsupported}"
    );
}
