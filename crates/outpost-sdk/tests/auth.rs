//! Wrong credentials end in a clear, typed error at once, never in a retry loop: on the first connection,
//! and when an identity is deleted under a connected client.

mod support;

use std::time::{Duration, Instant};

use outpost_hub::registry::Precondition;
use outpost_sdk::{ClientError, ClientOptions, ConnectionStatus, DeviceClient, ModuleClient};
use support::{within, TestHub};

/// A valid base64 key that is nobody's.
const WRONG_KEY: &str = "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nMTI=";

async fn refused_quickly<T: std::fmt::Debug>(
    connect: impl std::future::Future<Output = Result<T, ClientError>>,
) -> ClientError {
    let started = Instant::now();
    let error = within("a refusal", connect).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    error
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized() {
    let hub = TestHub::start().await;
    hub.create_device("d1").await;
    let connection_string = format!(
        "HostName={};DeviceId=d1;SharedAccessKey={WRONG_KEY}",
        hub.host()
    );
    let error = refused_quickly(DeviceClient::from_connection_string(
        &connection_string,
        hub.options(),
    ))
    .await;
    assert!(matches!(error, ClientError::Unauthorized(_)), "{error}");
    assert!(error.is_fatal());
}

#[tokio::test]
async fn an_unknown_device_or_module_is_unauthorized() {
    let hub = TestHub::start().await;
    let device = format!(
        "HostName={};DeviceId=nobody;SharedAccessKey={WRONG_KEY}",
        hub.host()
    );
    let error = refused_quickly(DeviceClient::from_connection_string(&device, hub.options())).await;
    assert!(matches!(error, ClientError::Unauthorized(_)), "{error}");

    hub.create_device("d1").await;
    let module = format!(
        "HostName={};DeviceId=d1;ModuleId=ghost;SharedAccessKey={WRONG_KEY}",
        hub.host()
    );
    let error = refused_quickly(ModuleClient::from_connection_string(&module, hub.options())).await;
    assert!(matches!(error, ClientError::Unauthorized(_)), "{error}");
}

#[tokio::test]
async fn a_token_for_another_hub_is_unauthorized() {
    let hub = TestHub::start().await;
    let connection_string = hub.create_device("d1").await;
    // Connect to this hub, but sign for another host name.
    let other = connection_string.replace(hub.host(), "other-hub.example");
    let options = ClientOptions {
        port: Some(8883),
        ..hub.options()
    };
    let other = format!("{other};GatewayHostName={}", hub.host());
    let error = refused_quickly(DeviceClient::from_connection_string(&other, options)).await;
    assert!(matches!(error, ClientError::Unauthorized(_)), "{error}");
}

#[tokio::test]
async fn an_unreachable_hub_or_an_untrusted_certificate_is_a_connection_error() {
    let hub = TestHub::start().await;
    let connection_string = hub.create_device("d1").await;
    let options = ClientOptions {
        port: Some(1),
        ..hub.options()
    };
    let error = refused_quickly(DeviceClient::from_connection_string(
        &connection_string,
        options,
    ))
    .await;
    assert!(matches!(error, ClientError::Connection { .. }), "{error}");

    let stranger_dir = hub.dir.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger =
        outpost_pki::CertificateAuthority::load_or_create(&stranger_dir, "Someone else's CA")
            .unwrap();
    let options = ClientOptions {
        ca_pem: Some(stranger.pem()),
        ..hub.options()
    };
    let error = refused_quickly(DeviceClient::from_connection_string(
        &connection_string,
        options,
    ))
    .await;
    let ClientError::Connection { context, .. } = &error else {
        panic!("expected a connection error, got {error}");
    };
    assert!(context.contains("TLS"), "{error}");
}

#[tokio::test]
async fn a_client_whose_identity_is_deleted_stops_with_unauthorized_instead_of_retrying() {
    let hub = TestHub::start().await;
    let client =
        DeviceClient::from_connection_string(&hub.create_device("doomed").await, hub.options())
            .await
            .unwrap();
    let mut desired = client.desired_properties().await.unwrap();
    within("the desired document", desired.next())
        .await
        .unwrap();

    hub.hub()
        .registry()
        .delete_device("doomed", &Precondition::Any)
        .await
        .unwrap();

    let mut status = client.status_changes();
    within(
        "the client to stop",
        status.wait_for(|s| *s == ConnectionStatus::Closed),
    )
    .await
    .unwrap();
    assert_eq!(within("the stream to end", desired.next()).await, None);
    let error = client.twin().await.unwrap_err();
    assert!(matches!(error, ClientError::Unauthorized(_)), "{error}");
}
