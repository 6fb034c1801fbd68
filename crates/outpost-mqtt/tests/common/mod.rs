//! Harness of the server integration tests: a self-signed TLS setup, an in-memory backend, a server on
//! 127.0.0.1:0, and a raw TLS connection for sending bytes no well-behaved client would send.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod backend;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use outpost_mqtt::{decode, encode, serve, Client, Connect, Packet, ServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use backend::FakeBackend;

/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// Host name in the certificate and in user names.
pub const HOST: &str = "localhost";

/// A self-signed certificate for localhost and 127.0.0.1, as server and client TLS configurations.
pub struct Tls {
    pub cert: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl Tls {
    pub fn new() -> Self {
        // The library installs no crypto provider; a test process installs ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certified =
            rcgen::generate_simple_self_signed(vec![HOST.to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let cert: CertificateDer<'static> = certified.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(Self::roots(&cert))
            .with_no_client_auth();
        Self {
            cert,
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }

    /// A client configuration that offers TLS 1.2 only, as the Python SDK does.
    pub fn client_tls12_only(&self) -> Arc<rustls::ClientConfig> {
        let config =
            rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
                .with_root_certificates(Self::roots(&self.cert))
                .with_no_client_auth();
        Arc::new(config)
    }

    fn roots(cert: &CertificateDer<'static>) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        roots
    }
}

/// A running server with its backend.
pub struct Server {
    pub addr: SocketAddr,
    pub backend: Arc<FakeBackend>,
    pub tls: Tls,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Starts a server with default settings and a fresh backend.
    pub async fn start() -> Self {
        Self::start_with(Arc::new(FakeBackend::default()), |_| {}).await
    }

    /// Starts a server on `backend`, with settings adjusted by `adjust`.
    pub async fn start_with(
        backend: Arc<FakeBackend>,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let tls = Tls::new();
        let mut config = ServerConfig::new(tls.server.clone());
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, backend.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            backend,
            tls,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Connects a device or module client the backend knows, with its valid token.
    pub async fn client(&self, client_id: &str, clean_session: bool) -> Client {
        self.backend.allow(client_id);
        self.try_client(client_id, &FakeBackend::token(client_id), clean_session)
            .await
            .unwrap()
    }

    /// Connects with any token.
    pub async fn try_client(
        &self,
        client_id: &str,
        token: &str,
        clean_session: bool,
    ) -> Result<Client, outpost_mqtt::ClientError> {
        let username = format!("{HOST}/{client_id}/?api-version=2019-10-01");
        Client::connect(
            self.addr,
            HOST,
            self.tls.client.clone(),
            client_id,
            Some(&username),
            Some(token),
            60,
            clean_session,
        )
        .await
    }

    /// Opens a TLS connection that speaks raw bytes.
    pub async fn raw(&self) -> Raw {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let stream = TlsConnector::from(self.tls.client.clone())
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens a raw connection and logs in as `client_id` (known to the backend).
    pub async fn raw_connected(&self, client_id: &str, clean_session: bool) -> Raw {
        self.backend.allow(client_id);
        self.raw_connected_with(client_id, &FakeBackend::token(client_id), clean_session)
            .await
    }

    /// Opens a raw connection and logs in as `client_id` with `token` (which the backend must accept).
    pub async fn raw_connected_with(
        &self,
        client_id: &str,
        token: &str,
        clean_session: bool,
    ) -> Raw {
        let mut raw = self.raw().await;
        let mut connect = Connect::new(client_id, 60, clean_session);
        connect.username = Some(format!("{HOST}/{client_id}/?api-version=2019-10-01"));
        connect.password = Some(token.to_owned().into_bytes().into());
        raw.send(&Packet::Connect(Box::new(connect))).await;
        assert!(
            matches!(raw.recv().await, Some(Packet::ConnAck(ack)) if ack.code == outpost_mqtt::ConnectReturnCode::Accepted)
        );
        raw
    }

    /// Fires the shutdown future and waits for `serve` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), self.task.take().unwrap())
            .await
            .expect("serve returns after shutdown")
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A TLS connection driven byte by byte.
pub struct Raw {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Raw {
    pub async fn send(&mut self, packet: &Packet) {
        let mut buf = BytesMut::new();
        encode(packet, &mut buf).unwrap();
        self.send_bytes(&buf).await;
    }

    /// Writes `bytes`, reporting a failure (the server closed the connection).
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The server may close before reading it all; that is what some tests expect.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or `None` when the server closed the connection (or it failed).
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                match decode(&mut self.buf, usize::MAX) {
                    Ok(Some(packet)) => return Some(packet),
                    Ok(None) => {}
                    Err(_) => return None,
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server answers or closes in time")
    }

    /// Waits until the server closes the connection, skipping packets; true if it did.
    pub async fn closed(&mut self) -> bool {
        while self.recv().await.is_some() {}
        true
    }
}
