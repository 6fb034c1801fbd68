//! The device side of a benchmark: MQTT over TLS to the hub as azure-iot-device connects (client id = device
//! id, user name `{host}/{device}/?api-version=...`, a SAS token as password, CleanSession=0).
//!
//! Three ways to connect. [`DeviceEndpoint::connect`] opens a full `outpost_mqtt::Client` (reader, writer and
//! event-loop tasks, keep-alive pings), for devices that receive messages. [`DeviceEndpoint::hold`] opens a
//! connection from a chosen source address, subscribes, and then only keeps the socket: thousands of them cost
//! the harness little, so the hub's side is what the connection benchmark measures. [`DeviceEndpoint::open`]
//! stops after the CONNACK and hands over the raw stream, for the soak benchmark's hostile clients.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use outpost_mqtt::{
    Client, ConnectReturnCode, Packet, PacketError, QoS, Subscribe, SubscribeReturnCode,
};
use rustix::io::Errno;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The api-version azure-iot-device 2.14.0 puts in its user name.
const DEVICE_API_VERSION: &str = "2021-04-12";

/// Device tokens live this long: longer than any run.
const TOKEN_TTL_SECS: u64 = 3600;

/// The filter of desired-property notifications.
pub const DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";

/// The keep-alive of receiving devices (the SDK's default).
const KEEP_ALIVE_SECS: u16 = 60;

/// Time allowed for one held connection: TCP, TLS, CONNECT/CONNACK and SUBSCRIBE/SUBACK.
const HOLD_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest packet accepted from the hub on a held connection (only CONNACK and SUBACK are read).
const MAX_PACKET: usize = 64 * 1024;

/// A device identity and its primary key.
#[derive(Debug, Clone)]
pub struct DeviceCredentials {
    /// Device id.
    pub id: String,
    /// Primary symmetric key (base64).
    pub key: String,
}

/// Why a held connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The local socket could not be created or bound.
    #[error("cannot open a socket from {source_ip}: {error}")]
    Socket {
        /// The source address.
        source_ip: IpAddr,
        /// The cause.
        error: std::io::Error,
    },
    /// TCP connect, TLS or the MQTT exchange failed at the socket level.
    #[error("{stage}: {error}")]
    Io {
        /// What was being done.
        stage: &'static str,
        /// The cause.
        error: std::io::Error,
    },
    /// The hub sent bytes that are not MQTT.
    #[error("malformed packet from the hub: {0}")]
    Packet(#[from] PacketError),
    /// The hub closed the connection.
    #[error("the hub closed the connection during {0}")]
    Closed(&'static str),
    /// The hub refused the CONNECT.
    #[error("the hub refused the CONNECT: {0:?}")]
    Refused(ConnectReturnCode),
    /// The hub refused the subscription.
    #[error("the hub refused the subscription to {DESIRED_PATCHES}")]
    SubscriptionRefused,
    /// The hub answered with another packet than the one expected.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// The packet expected.
        expected: &'static str,
        /// The packet received.
        got: &'static str,
    },
    /// No answer in time.
    #[error("no answer within {HOLD_TIMEOUT:?}")]
    Timeout,
}

impl HoldError {
    /// Why, in words that point at the limit that was hit.
    pub fn explain(&self) -> String {
        let errno = match self {
            Self::Socket { error, .. } | Self::Io { error, .. } => {
                Some(Errno::from_io_error(error))
            }
            _ => None,
        };
        match errno.flatten() {
            Some(Errno::MFILE) => {
                format!("{self} (the harness ran out of file descriptors: RLIMIT_NOFILE)")
            }
            Some(Errno::NFILE) => format!("{self} (the system-wide file table is full)"),
            Some(Errno::ADDRNOTAVAIL | Errno::ADDRINUSE) => {
                format!("{self} (no free local port on the source address)")
            }
            _ => self.to_string(),
        }
    }
}

/// Where and how devices reach the hub.
#[derive(Clone)]
pub struct DeviceEndpoint {
    /// The hub's MQTT/TLS address.
    pub addr: SocketAddr,
    /// The hub's host name: the TLS server name and the token audience.
    pub host: String,
    tls: Arc<rustls::ClientConfig>,
}

impl DeviceEndpoint {
    /// Devices of the hub at `addr` named `host`, trusting the CA in `ca_pem`.
    pub fn new(addr: SocketAddr, host: &str, ca_pem: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            host: host.to_owned(),
            tls: client_tls(ca_pem)?,
        })
    }

    fn username(&self, device: &str) -> String {
        format!("{}/{device}/?api-version={DEVICE_API_VERSION}", self.host)
    }

    fn password(&self, device: &DeviceCredentials) -> anyhow::Result<String> {
        let expiry = chrono::Utc::now().timestamp().max(0) as u64 + TOKEN_TTL_SECS;
        outpost_core::device_token(&self.host, &device.id, &device.key, expiry)
            .map_err(|e| anyhow::anyhow!("cannot sign a token for {}: {e}", device.id))
    }

    /// Connects a receiving device with `outpost_mqtt`'s client and subscribes it to desired patches.
    pub async fn connect(&self, device: &DeviceCredentials) -> anyhow::Result<Client> {
        let client = Client::connect(
            self.addr,
            &self.host,
            Arc::clone(&self.tls),
            &device.id,
            Some(&self.username(&device.id)),
            Some(&self.password(device)?),
            KEEP_ALIVE_SECS,
            false,
        )
        .await
        .with_context(|| format!("device {} cannot connect", device.id))?;
        let granted = client
            .subscribe(DESIRED_PATCHES, QoS::AtLeastOnce)
            .await
            .with_context(|| format!("device {} cannot subscribe", device.id))?;
        if granted == SubscribeReturnCode::Failure {
            anyhow::bail!(
                "the hub refused {}'s subscription to desired patches",
                device.id
            );
        }
        Ok(client)
    }

    /// Opens a connection from `source_ip` as `device` (CleanSession=0, keep-alive off so that an idle socket
    /// stays open without pings), subscribes to desired patches, and returns the open socket.
    pub async fn hold(
        &self,
        device: &DeviceCredentials,
        source_ip: IpAddr,
    ) -> Result<HeldConnection, HoldError> {
        let password = self.password(device).map_err(|e| HoldError::Io {
            stage: "signing the token",
            error: std::io::Error::other(e.to_string()),
        })?;
        tokio::time::timeout(HOLD_TIMEOUT, self.hold_inner(device, source_ip, password))
            .await
            .map_err(|_| HoldError::Timeout)?
    }

    /// Opens a connection from `source_ip` as `device` (CleanSession=0, keep-alive off) and returns the stream
    /// once the hub has accepted the CONNECT; the caller decides what to send next.
    pub async fn open(
        &self,
        device: &DeviceCredentials,
        source_ip: IpAddr,
    ) -> Result<TlsStream<TcpStream>, HoldError> {
        let password = self.password(device).map_err(|e| HoldError::Io {
            stage: "signing the token",
            error: std::io::Error::other(e.to_string()),
        })?;
        let mut buf = BytesMut::new();
        tokio::time::timeout(
            HOLD_TIMEOUT,
            self.open_inner(device, source_ip, password, &mut buf),
        )
        .await
        .map_err(|_| HoldError::Timeout)?
    }

    async fn hold_inner(
        &self,
        device: &DeviceCredentials,
        source_ip: IpAddr,
        password: String,
    ) -> Result<HeldConnection, HoldError> {
        let mut buf = BytesMut::new();
        let mut stream = self
            .open_inner(device, source_ip, password, &mut buf)
            .await?;
        let subscribe = Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(DESIRED_PATCHES.to_owned(), QoS::AtLeastOnce)],
        });
        let mut out = BytesMut::new();
        outpost_mqtt::encode(&subscribe, &mut out)?;
        send(&mut stream, &out, "SUBSCRIBE").await?;
        match read_packet(&mut stream, &mut buf, "SUBACK").await? {
            Packet::SubAck(ack)
                if ack
                    .return_codes
                    .first()
                    .is_some_and(|c| *c != SubscribeReturnCode::Failure) => {}
            Packet::SubAck(_) => return Err(HoldError::SubscriptionRefused),
            other => return Err(unexpected("SUBACK", &other)),
        }
        Ok(HeldConnection { _stream: stream })
    }

    /// TCP, TLS, CONNECT and CONNACK; what the hub sent after the CONNACK stays in `buf`.
    async fn open_inner(
        &self,
        device: &DeviceCredentials,
        source_ip: IpAddr,
        password: String,
        buf: &mut BytesMut,
    ) -> Result<TlsStream<TcpStream>, HoldError> {
        let socket_error = |error| HoldError::Socket { source_ip, error };
        let socket = TcpSocket::new_v4().map_err(socket_error)?;
        socket
            .bind(SocketAddr::new(source_ip, 0))
            .map_err(socket_error)?;
        let tcp: TcpStream = socket
            .connect(self.addr)
            .await
            .map_err(|error| HoldError::Io {
                stage: "TCP connect",
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.host.clone()).map_err(|e| HoldError::Io {
            stage: "TLS server name",
            error: std::io::Error::other(e.to_string()),
        })?;
        let mut stream = TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|error| HoldError::Io {
                stage: "TLS handshake",
                error,
            })?;

        let mut connect = outpost_mqtt::Connect::new(device.id.clone(), 0, false);
        connect.username = Some(self.username(&device.id));
        connect.password = Some(Bytes::from(password.into_bytes()));
        let mut out = BytesMut::new();
        outpost_mqtt::encode(&Packet::Connect(Box::new(connect)), &mut out)?;
        send(&mut stream, &out, "CONNECT").await?;
        buf.clear();
        match read_packet(&mut stream, buf, "CONNACK").await? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => Ok(stream),
            Packet::ConnAck(ack) => Err(HoldError::Refused(ack.code)),
            other => Err(unexpected("CONNACK", &other)),
        }
    }
}

/// Connects every device with [`DeviceEndpoint::connect`], `concurrency` at a time; the clients come back in
/// the order of `devices`.
pub async fn connect_all(
    endpoint: &DeviceEndpoint,
    devices: &[DeviceCredentials],
    concurrency: usize,
) -> anyhow::Result<Vec<Client>> {
    let mut pending = devices.iter().cloned().enumerate();
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<_>, (index, device): (usize, DeviceCredentials)| {
        let endpoint = endpoint.clone();
        tasks.spawn(async move { (index, endpoint.connect(&device).await) });
    };
    for next in pending.by_ref().take(concurrency.max(1)) {
        spawn(&mut tasks, next);
    }
    let mut clients: Vec<Option<Client>> = devices.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (index, client) = joined.context("a connecting task failed")?;
        clients[index] = Some(client?);
        if let Some(next) = pending.next() {
            spawn(&mut tasks, next);
        }
    }
    Ok(clients.into_iter().flatten().collect())
}

/// A TLS client configuration that trusts only the hub's CA (in `ca_pem`), for its MQTT and HTTPS ports.
pub fn client_tls(ca_pem: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca_pem).with_context(|| format!("cannot read {}", ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(certificate.context("the hub's CA file is not PEM")?)
            .context("the hub's CA certificate is not usable")?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// An open, idle device connection; dropping it closes the socket.
pub struct HeldConnection {
    _stream: TlsStream<TcpStream>,
}

fn unexpected(expected: &'static str, got: &Packet) -> HoldError {
    HoldError::Unexpected {
        expected,
        got: got.name(),
    }
}

async fn send(
    stream: &mut TlsStream<TcpStream>,
    bytes: &[u8],
    stage: &'static str,
) -> Result<(), HoldError> {
    let io = |error| HoldError::Io { stage, error };
    stream.write_all(bytes).await.map_err(io)?;
    stream.flush().await.map_err(io)
}

async fn read_packet(
    stream: &mut TlsStream<TcpStream>,
    buf: &mut BytesMut,
    stage: &'static str,
) -> Result<Packet, HoldError> {
    loop {
        if let Some(packet) = outpost_mqtt::decode(buf, MAX_PACKET)? {
            return Ok(packet);
        }
        let read = stream
            .read_buf(buf)
            .await
            .map_err(|error| HoldError::Io { stage, error })?;
        if read == 0 {
            return Err(HoldError::Closed(stage));
        }
    }
}
