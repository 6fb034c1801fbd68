//! An X.509 edge device on the REST API: a request without an `Authorization` header authenticates with the TLS
//! client certificate the HTTPS listener put in its extensions (`outpost_https::ClientCertificateChain`), as the
//! device its path names, and gets exactly the rights that device's SAS token would: its own modules and its
//! upstream link, nothing else. Tokens keep working beside a certificate.

mod router_call;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use outpost_core::edge_link::{LINK_API_VERSION, LINK_VERSION_PARAM};
use outpost_https::ClientCertificateChain;
use outpost_hub::identity::AuthenticationType;
use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::rest::API_VERSIONS;
use outpost_hub::Hub;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

/// A self-signed client certificate with common name `name`, DER.
fn certificate(name: &str) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

/// Registers `device_id` as `selfSigned` with `certificate`'s SHA-256 thumbprint.
async fn register(hub: &Hub, device_id: &str, certificate: &CertificateDer<'_>, iot_edge: bool) {
    let thumbprint = outpost_pki::client_auth::thumbprints(certificate).sha256;
    hub.registry()
        .put_device(
            &DeviceSpec {
                device_id: device_id.into(),
                authentication: Some(AuthenticationType::SelfSigned),
                primary_thumbprint: Some(thumbprint),
                iot_edge,
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
}

/// How a test request authenticates.
#[derive(Clone, Copy)]
enum Credential<'a> {
    Certificate(&'a CertificateDer<'static>),
    Token(&'a str),
    Both(&'a CertificateDer<'static>, &'a str),
}

/// Calls `method path` (api-version added) with `credential`; returns the status and the JSON body (or null).
async fn call(
    hub: &Arc<Hub>,
    credential: Credential<'_>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{path}{separator}api-version={}", API_VERSIONS[0]))
        .header("Content-Type", "application/json");
    let (certificate, token) = match credential {
        Credential::Certificate(certificate) => (Some(certificate), None),
        Credential::Token(token) => (None, Some(token)),
        Credential::Both(certificate, token) => (Some(certificate), Some(token)),
    };
    if let Some(token) = token {
        request = request.header("Authorization", token);
    }
    let mut request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    if let Some(certificate) = certificate {
        request
            .extensions_mut()
            .insert(ClientCertificateChain(vec![certificate.clone()].into()));
    }
    router_call::answer(outpost_hub::rest::router(hub.clone()), request).await
}

fn link(path: &str) -> String {
    format!("/edge/edge1{path}?{LINK_VERSION_PARAM}={LINK_API_VERSION}")
}

fn module_body(module: &str) -> Value {
    json!({"deviceId": "edge1", "moduleId": module, "managedBy": "IotEdge",
           "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}})
}

#[tokio::test]
async fn an_edge_device_manages_its_modules_and_uses_its_link_with_its_certificate_alone() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let edge = certificate("edge1");
    register(&hub, "edge1", &edge, true).await;
    let hub = Arc::new(hub);
    let by_certificate = Credential::Certificate(&edge);

    let (status, module) = call(
        &hub,
        by_certificate,
        "PUT",
        "/devices/edge1/modules/filter",
        Some(module_body("filter")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{module}");
    assert_eq!(module["moduleId"], "filter");
    assert!(
        !module["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .is_empty(),
        "the module gets SAS keys as with a token: {module}"
    );
    let (status, modules) = call(&hub, by_certificate, "GET", "/devices/edge1/modules", None).await;
    assert_eq!(status, StatusCode::OK, "{modules}");
    assert!(
        modules
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["moduleId"] == "filter"),
        "{modules}"
    );
    let (status, scope) = call(&hub, by_certificate, "GET", &link("/scope"), None).await;
    assert_eq!(status, StatusCode::OK, "{scope}");
    let (status, _) = call(
        &hub,
        by_certificate,
        "DELETE",
        "/devices/edge1/modules/filter",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_certificate_opens_only_what_its_devices_token_would() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let edge = certificate("edge1");
    let plain = certificate("plain");
    register(&hub, "edge1", &edge, true).await;
    register(&hub, "plain", &plain, false).await;
    let hub = Arc::new(hub);
    let refused = |(status, body): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    };

    let impostor = certificate("edge1");
    let scope = link("/scope");
    for (why, certificate, path) in [
        // Another device's modules and link, with the edge device's certificate.
        (
            "a certificate of another key named edge1",
            &impostor,
            "/devices/edge1/modules",
        ),
        (
            "a certificate of another key named edge1",
            &impostor,
            scope.as_str(),
        ),
        (
            "a device that is not an edge device manages no modules",
            &plain,
            "/devices/plain/modules",
        ),
        // The edge device's certificate on a path naming another device, or on service routes.
        ("edge1's certificate", &edge, "/devices/plain/modules"),
        ("edge1's certificate", &edge, "/devices"),
        ("edge1's certificate", &edge, "/devices/edge1"),
        ("edge1's certificate", &edge, "/twins/edge1"),
        ("edge1's certificate", &edge, "/statistics/devices"),
    ] {
        let (status, body) = call(
            &hub,
            Credential::Certificate(certificate),
            "GET",
            path,
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{why}, GET {path}: {body}"
        );
    }

    // A disabled device's certificate opens nothing.
    let mut record = hub.registry().device("edge1").await.unwrap();
    record.status = outpost_hub::identity::IdentityStatus::Disabled;
    hub.registry()
        .put_device(
            &DeviceSpec {
                device_id: "edge1".into(),
                status: Some(record.status),
                authentication: Some(AuthenticationType::SelfSigned),
                primary_thumbprint: record.credentials.primary_thumbprint.clone(),
                iot_edge: true,
                ..DeviceSpec::default()
            },
            &Precondition::Any,
        )
        .await
        .unwrap();
    refused(
        call(
            &hub,
            Credential::Certificate(&edge),
            "GET",
            "/devices/edge1/modules",
            None,
        )
        .await,
    );
}

#[tokio::test]
async fn a_token_is_checked_as_before_when_a_certificate_comes_with_it() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let edge = certificate("edge1");
    register(&hub, "edge1", &edge, true).await;
    let owner = hub.policy("iothubowner").unwrap().clone();
    let hub = Arc::new(hub);
    let expiry = chrono::Utc::now().timestamp().unsigned_abs() + 600;
    let service =
        outpost_core::service_token("hub.test", &owner.name, &owner.primary_key, expiry).unwrap();

    // A service client that happens to present a certificate keeps its policy's rights.
    let (status, devices) = call(
        &hub,
        Credential::Both(&edge, &service),
        "GET",
        "/devices",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    let (status, devices) = call(&hub, Credential::Token(&service), "GET", "/devices", None).await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    // A bad token is refused even beside a good certificate: the header is what the request claims.
    let (status, body) = call(
        &hub,
        Credential::Both(&edge, "SharedAccessSignature sr=x&sig=y&se=1"),
        "GET",
        "/devices/edge1/modules",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}
