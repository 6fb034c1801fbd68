//! The provisioning service over a real hub (SQLite): a group member's token finds its group, a registration
//! creates the edge device with the derived key and its initial twin and records the assignment, and refusals
//! (a malformed request, a disabled enrollment, a wrong key) create no device. The ID scope is made once.

mod router_call;

use outpost_core::provisioning::{derive_device_key, registration_token, RegistrationStatus};
use outpost_hub::provisioning::model::{Attestation, EnrollmentRef};
use outpost_hub::provisioning::{operation_status, Registered};
use outpost_hub::{Hub, HubError};
use serde_json::json;

const GROUP_KEY: &str = "Z3JvdXAga2V5IG9mIHRoZSBmbGVldCAxMjM0NTY=";

fn token(hub: &Hub, registration_id: &str, key: &str) -> String {
    let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 3600;
    registration_token(hub.id_scope(), registration_id, key, expiry).unwrap()
}

async fn hub_with_group() -> Hub {
    let hub = Hub::in_memory("hub.test").unwrap();
    hub.provisioning()
        .put_group(
            "plant",
            &json!({
                "enrollmentGroupId": "plant",
                "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": GROUP_KEY, "secondaryKey": ""}},
                "capabilities": {"iotEdge": true},
                "initialTwin": {"tags": {"site": "plant-7"}, "properties": {"desired": {"rate": 5}}},
            }),
        )
        .await
        .unwrap();
    hub
}

#[tokio::test]
async fn a_group_member_registers_as_an_edge_device_with_its_derived_key_and_initial_twin() {
    let hub = hub_with_group().await;
    let group = hub.provisioning().group("plant").await.unwrap();
    let Attestation::SymmetricKey { symmetric_key } = &group.settings.attestation else {
        panic!("{:?}", group.settings.attestation)
    };
    let secondary = symmetric_key.secondary_key.clone();
    assert!(!secondary.is_empty(), "a missing key is generated");

    let derived = derive_device_key(GROUP_KEY, "gw-1").unwrap();
    let attested = hub
        .provisioning()
        .authenticate(
            hub.id_scope(),
            "gw-1",
            Some(&token(&hub, "gw-1", &derived)),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(attested.enrollment, EnrollmentRef::Group("plant".into()));

    let Registered::Ran(record) = hub
        .provisioning()
        .register(&attested, br#"{"registrationId": "gw-1"}"#)
        .await
        .unwrap()
    else {
        panic!("refused")
    };
    assert_eq!(record.status, RegistrationStatus::Assigned);
    assert_eq!(record.substatus, "initialAssignment");
    assert_eq!(record.enrollment_group_id.as_deref(), Some("plant"));

    let device = hub.registry().device("gw-1").await.unwrap();
    assert!(device.iot_edge);
    assert_eq!(device.credentials.primary_key, derived);
    assert_eq!(
        device.credentials.secondary_key,
        derive_device_key(&secondary, "gw-1").unwrap()
    );
    let twin = hub.twins().twin("gw-1", None).await.unwrap().twin;
    assert_eq!(twin.tags().get("site"), Some(&json!("plant-7")));
    assert_eq!(twin.desired().get("rate"), Some(&json!(5)));

    // The operation the device polls answers with a complete state.
    let polled = hub
        .provisioning()
        .operation("gw-1", &record.operation_id)
        .await
        .unwrap()
        .unwrap();
    let answer = serde_json::to_value(operation_status(&polled)).unwrap();
    assert_eq!(answer["status"], "assigned");
    assert_eq!(answer["registrationState"]["assignedHub"], "hub.test");
    assert_eq!(answer["registrationState"]["deviceId"], "gw-1");
    assert!(hub
        .provisioning()
        .operation("gw-1", "another")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_malformed_or_foreign_request_is_refused_and_creates_nothing() {
    let hub = hub_with_group().await;
    let derived = derive_device_key(GROUP_KEY, "gw-2").unwrap();
    let attested = hub
        .provisioning()
        .authenticate(
            hub.id_scope(),
            "gw-2",
            Some(&token(&hub, "gw-2", &derived)),
            &[],
        )
        .await
        .unwrap();
    for body in [&b"{not json"[..], br#"{"registrationId": "gw-3"}"#, b"[]"] {
        let answer = hub.provisioning().register(&attested, body).await.unwrap();
        assert!(
            matches!(answer, Registered::Refused { status: 400, .. }),
            "{answer:?}"
        );
    }
    assert!(matches!(
        hub.registry().device("gw-2").await,
        Err(HubError::DeviceNotFound(_))
    ));
    assert!(hub.provisioning().registrations().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_wrong_key_scope_or_the_group_key_itself_is_refused() {
    let hub = hub_with_group().await;
    let scope = hub.id_scope().to_owned();
    let derived = derive_device_key(GROUP_KEY, "gw-4").unwrap();
    let provisioning = hub.provisioning();
    assert!(provisioning
        .authenticate(&scope, "gw-4", Some(&token(&hub, "gw-4", GROUP_KEY)), &[])
        .await
        .is_err());
    assert!(provisioning
        .authenticate(
            "0ne00000000",
            "gw-4",
            Some(&token(&hub, "gw-4", &derived)),
            &[]
        )
        .await
        .is_err());
    assert!(provisioning
        .authenticate(&scope, "gw-4", Some("not a token"), &[])
        .await
        .is_err());
    assert!(provisioning
        .authenticate(&scope, "gw-5", Some(&token(&hub, "gw-4", &derived)), &[])
        .await
        .is_err());
}

#[tokio::test]
async fn a_disabled_enrollment_records_the_refusal_and_creates_no_device() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let key = "aW5kaXZpZHVhbCBrZXkgb2YgZGV2aWNlIG9uZQ==";
    hub.provisioning()
        .put_enrollment(
            "parked",
            &json!({"registrationId": "parked", "provisioningStatus": "disabled",
                    "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}}),
        )
        .await
        .unwrap();
    let attested = hub
        .provisioning()
        .authenticate(
            hub.id_scope(),
            "parked",
            Some(&token(&hub, "parked", key)),
            &[],
        )
        .await
        .unwrap();
    let Registered::Ran(record) = hub
        .provisioning()
        .register(&attested, br#"{"registrationId": "parked"}"#)
        .await
        .unwrap()
    else {
        panic!("refused before running")
    };
    assert_eq!(record.status, RegistrationStatus::Disabled);
    let answer = serde_json::to_value(operation_status(&record)).unwrap();
    for field in ["deviceId", "assignedHub", "substatus"] {
        assert!(answer["registrationState"][field].is_string(), "{field}");
    }
    assert!(matches!(
        hub.registry().device("parked").await,
        Err(HubError::DeviceNotFound(_))
    ));
}

#[test]
fn the_id_scope_is_made_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let first = Hub::open(dir.path(), "hub.test")
        .unwrap()
        .id_scope()
        .to_owned();
    let again = Hub::open(dir.path(), "hub.test")
        .unwrap()
        .id_scope()
        .to_owned();
    assert_eq!(first, again);
    assert!(first.starts_with("0ne") && first.len() == 11, "{first}");
}

/// A self-signed device certificate with common name `name`: its DER and its PEM.
fn device_certificate(name: &str) -> (rustls::pki_types::CertificateDer<'static>, String) {
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = params.self_signed(&key).unwrap();
    (certificate.der().clone(), certificate.pem())
}

/// `method uri` on the provisioning host's REST routes, presenting `chain` as the TLS client certificate.
async fn rest_call(
    hub: &std::sync::Arc<Hub>,
    method: &str,
    uri: &str,
    chain: Option<&rustls::pki_types::CertificateDer<'static>>,
    body: &str,
) -> (axum::http::StatusCode, serde_json::Value) {
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("Content-Type", "application/json")
        .body(axum::body::Body::from(body.to_owned()))
        .unwrap();
    if let Some(certificate) = chain {
        request
            .extensions_mut()
            .insert(outpost_https::ClientCertificateChain(
                vec![certificate.clone()].into(),
            ));
    }
    let backend = std::sync::Arc::new(outpost_hub::provisioning::head::HubProvisioning(
        hub.clone(),
    ));
    router_call::answer(outpost_hub::provisioning::rest::router(backend), request).await
}

#[tokio::test]
async fn the_rest_variant_attests_with_the_client_certificate_of_an_x509_enrollment() {
    let hub = Hub::in_memory("hub.test").unwrap();
    let (enrolled, pem) = device_certificate("cam-1");
    hub.provisioning()
        .put_enrollment(
            "cam-1",
            &json!({"registrationId": "cam-1", "attestation": {"type": "x509", "x509": {
                "clientCertificates": {"primary": {"certificate": pem}}}}}),
        )
        .await
        .unwrap();
    let hub = std::sync::Arc::new(hub);
    let base = format!("/{}/registrations/cam-1", hub.id_scope());
    let register = format!("{base}/register?api-version=2019-03-31");
    let body = r#"{"registrationId": "cam-1"}"#;

    // No proof at all, and a certificate of the same name that is not the enrolled one: 401, nothing created.
    let (impostor, _) = device_certificate("cam-1");
    for chain in [None, Some(&impostor)] {
        let (status, refusal) = rest_call(&hub, "PUT", &register, chain, body).await;
        assert_eq!(status, 401, "{refusal}");
        assert_eq!(refusal["errorCode"], 401_002, "{refusal}");
    }
    assert!(hub.registry().device("cam-1").await.is_err());

    let (status, started) = rest_call(&hub, "PUT", &register, Some(&enrolled), body).await;
    assert_eq!(status, 202, "{started}");
    let operation = started["operationId"].as_str().unwrap();
    let (status, polled) = rest_call(
        &hub,
        "GET",
        &format!("{base}/operations/{operation}?api-version=2019-03-31"),
        Some(&enrolled),
        "",
    )
    .await;
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["status"], "assigned", "{polled}");
    let device = hub.registry().device("cam-1").await.unwrap();
    assert_eq!(
        device.credentials.primary_thumbprint.as_deref(),
        Some(
            outpost_pki::client_auth::thumbprints(&enrolled)
                .sha256
                .as_str()
        )
    );
}
