//! A listener whose TLS asks for an optional client certificate hands the chain a client presented to every
//! request of that connection (`ClientCertificateChain`), and nothing to a client that presented none.

use std::sync::Arc;

use axum::routing::get;
use outpost_https::{ClientCertificateChain, HttpsLimits};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A self-signed certificate for `name` (a DNS name and a common name) and its key, PEM.
fn self_signed(name: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn der(pem: &str) -> CertificateDer<'static> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

/// What the route answers: how many certificates the request carries.
async fn chain_length(chain: Option<axum::Extension<ClientCertificateChain>>) -> String {
    chain
        .map_or(0, |axum::Extension(chain)| chain.0.len())
        .to_string()
}

/// `GET /` over TLS to `addr`, trusting `server_pem`, presenting `client` (chain and key PEM) if given; the body.
async fn get_root(
    addr: std::net::SocketAddr,
    server_pem: &str,
    client: Option<&(String, String)>,
) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(server_pem)).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                vec![der(chain)],
                rustls_pemfile::private_key(&mut key.as_bytes())
                    .unwrap()
                    .unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("hub.test").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: hub.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    answer.rsplit("\r\n\r\n").next().unwrap().to_owned()
}

#[tokio::test]
async fn a_presented_client_certificate_reaches_each_request_and_its_absence_too() {
    let (server_pem, server_key) = self_signed("hub.test");
    let certificate =
        Arc::new(outpost_pki::ReloadableCertificate::from_pem(&server_pem, &server_key).unwrap());
    let tls =
        outpost_pki::reloading_tls_config_requesting_client_certificates(certificate).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(outpost_https::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        axum::Router::new().route("/", get(chain_length)),
        HttpsLimits::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let device = self_signed("device-1");
    assert_eq!(get_root(addr, &server_pem, Some(&device)).await, "1");
    assert_eq!(get_root(addr, &server_pem, None).await, "0");

    let _ = stop.send(());
    server.await.unwrap();
}
