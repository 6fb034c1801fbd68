//! One MQTT/TLS connection: open it (TCP, TLS, CONNECT, CONNACK), then a reader task that decodes packets
//! and a writer task that encodes them, both around `outpost-mqtt`'s codec.
//!
//! The SDK does not use `outpost_mqtt::Client`: its `recv(&mut self)` and `publish(&self)` cannot be used
//! at once by the one task that owns the connection, and the driver needs packet ids in its own hands to
//! resend unacknowledged publishes on the next connection. A link knows nothing of IoT Hub; the driver does.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use outpost_mqtt::packet::{self, ConnAck, Connect, ConnectReturnCode, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;

/// Largest packet accepted from the server: a 256 KiB message with a long property bag, with room to spare.
const MAX_INCOMING_PACKET: usize = 1024 * 1024;

/// Where and as whom a link connects.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The host dialled and checked against the server certificate (the gateway, or the hub).
    pub(crate) host: String,
    /// The MQTT port.
    pub(crate) port: u16,
    /// TLS settings with the trusted CAs.
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// `d` or `d/m`.
    pub(crate) client_id: String,
    /// `{hub}/{clientId}/?api-version=..`.
    pub(crate) username: String,
    /// Seconds; 0 turns keep-alive off.
    pub(crate) keep_alive: u16,
    /// Time allowed for TCP, TLS and CONNACK together.
    pub(crate) connect_timeout: Duration,
}

/// Why reading from a link stopped.
#[derive(Debug)]
pub(crate) enum LinkEnd {
    /// The server closed the connection between packets.
    Closed,
    /// Reading failed, or the bytes were not MQTT.
    Failed(String),
}

/// A connected MQTT link.
pub(crate) struct Link {
    out: Option<mpsc::UnboundedSender<Packet>>,
    packets: mpsc::Receiver<Result<Packet, String>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// Whether the server resumed a stored session.
    pub(crate) session_present: bool,
}

impl Link {
    /// Connects and sends CONNECT with `password`; returns once the server accepted it.
    pub(crate) async fn open(
        endpoint: &Endpoint,
        password: &str,
        clean_session: bool,
    ) -> Result<Self, ClientError> {
        let target = format!("{}:{}", endpoint.host, endpoint.port);
        tokio::time::timeout(
            endpoint.connect_timeout,
            Self::handshake(endpoint, password, clean_session),
        )
        .await
        .map_err(|_| {
            ClientError::Timeout(format!(
                "no MQTT connection to {target} within {:?}",
                endpoint.connect_timeout
            ))
        })?
    }

    async fn handshake(
        endpoint: &Endpoint,
        password: &str,
        clean_session: bool,
    ) -> Result<Self, ClientError> {
        let target = format!("{}:{}", endpoint.host, endpoint.port);
        let name = crate::tls::server_name(&endpoint.host)?;
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| ClientError::connection(format!("cannot reach {target}"), e))?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(Arc::clone(&endpoint.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::connection(format!("TLS with {target} failed"), e))?;
        let (mut reader, mut writer) = tokio::io::split(stream);

        let mut connect = Connect::new(
            endpoint.client_id.as_str(),
            endpoint.keep_alive,
            clean_session,
        );
        connect.username = Some(endpoint.username.clone());
        connect.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
        let mut buf = BytesMut::new();
        packet::encode(&Packet::Connect(Box::new(connect)), &mut buf)
            .map_err(|e| ClientError::Configuration(format!("cannot encode CONNECT: {e}")))?;
        writer
            .write_all(&buf)
            .await
            .map_err(|e| ClientError::connection(format!("sending CONNECT to {target}"), e))?;
        writer
            .flush()
            .await
            .map_err(|e| ClientError::connection(format!("sending CONNECT to {target}"), e))?;

        buf.clear();
        let session_present = match read_packet(&mut reader, &mut buf).await {
            Ok(Some(Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Accepted,
                session_present,
            }))) => session_present,
            Ok(Some(Packet::ConnAck(refused))) => {
                return Err(refusal(refused.code, &endpoint.client_id, &target))
            }
            Ok(Some(other)) => {
                return Err(ClientError::Protocol(format!(
                    "{target} answered CONNECT with {}",
                    other.name()
                )))
            }
            Ok(None) => {
                return Err(ClientError::connection_closed(format!(
                    "{target} closed the connection before CONNACK"
                )))
            }
            Err(reason) => {
                return Err(ClientError::connection_closed(format!(
                    "reading CONNACK from {target}: {reason}"
                )))
            }
        };

        let (packets_tx, packets) = mpsc::channel(64);
        let (out, out_rx) = mpsc::unbounded_channel();
        Ok(Self {
            out: Some(out),
            packets,
            reader: tokio::spawn(reader_task(reader, buf, packets_tx)),
            writer: tokio::spawn(writer_task(writer, out_rx)),
            session_present,
        })
    }

    /// Queues a packet; false once the connection is gone.
    pub(crate) fn send(&self, packet: Packet) -> bool {
        self.out
            .as_ref()
            .is_some_and(|out| out.send(packet).is_ok())
    }

    /// The next packet from the server, or why there will be none.
    pub(crate) async fn recv(&mut self) -> Result<Packet, LinkEnd> {
        match self.packets.recv().await {
            Some(Ok(packet)) => Ok(packet),
            Some(Err(reason)) => Err(LinkEnd::Failed(reason)),
            None => Err(LinkEnd::Closed),
        }
    }

    /// Sends DISCONNECT and waits (briefly) for everything queued to be written.
    pub(crate) async fn close(mut self) {
        if let Some(out) = self.out.take() {
            let _ = out.send(Packet::Disconnect);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.writer).await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// The error for a refused CONNECT (IoT Hub: 4 and 5 are credentials, 3 is try later).
fn refusal(code: ConnectReturnCode, client_id: &str, target: &str) -> ClientError {
    match code {
        ConnectReturnCode::BadUserNameOrPassword | ConnectReturnCode::NotAuthorized => {
            ClientError::Unauthorized(format!(
                "{target} refused {client_id}: wrong key or token, or the identity does not exist or is disabled"
            ))
        }
        ConnectReturnCode::ServerUnavailable => {
            ClientError::Unavailable(format!("{target} refused {client_id} for now"))
        }
        other => ClientError::Protocol(format!("{target} refused {client_id}: {other:?}")),
    }
}

/// Reads one packet, `Ok(None)` at a clean EOF.
async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, String> {
    loop {
        if let Some(packet) = packet::decode(buf, MAX_INCOMING_PACKET).map_err(|e| e.to_string())? {
            return Ok(Some(packet));
        }
        buf.reserve(16 * 1024);
        match reader.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err("the connection closed in the middle of a packet".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn reader_task<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buf: BytesMut,
    packets: mpsc::Sender<Result<Packet, String>>,
) {
    loop {
        let next = match read_packet(&mut reader, &mut buf).await {
            Ok(Some(packet)) => Ok(packet),
            Ok(None) => return,
            Err(reason) => Err(reason),
        };
        let failed = next.is_err();
        if packets.send(next).await.is_err() || failed {
            return;
        }
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Packet>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    while let Some(packet) = queue.recv().await {
        let mut last = matches!(packet, Packet::Disconnect);
        encode(&packet, &mut buf);
        while buf.len() < 64 * 1024 && !last {
            match queue.try_recv() {
                Ok(packet) => {
                    last = matches!(packet, Packet::Disconnect);
                    encode(&packet, &mut buf);
                }
                Err(_) => break,
            }
        }
        if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        buf.clear();
        if last {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

fn encode(packet: &Packet, buf: &mut BytesMut) {
    // The driver checks sizes before queueing; a packet that still cannot be encoded is dropped, not cut.
    if let Err(error) = packet::encode(packet, buf) {
        tracing::error!(%error, packet = packet.name(), "cannot encode a packet; not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_and_unknown_identities_are_unauthorized() {
        for code in [
            ConnectReturnCode::BadUserNameOrPassword,
            ConnectReturnCode::NotAuthorized,
        ] {
            assert!(matches!(
                refusal(code, "d", "h:8883"),
                ClientError::Unauthorized(_)
            ));
        }
        assert!(matches!(
            refusal(ConnectReturnCode::ServerUnavailable, "d", "h:8883"),
            ClientError::Unavailable(_)
        ));
    }

    #[tokio::test]
    async fn a_packet_split_across_reads_is_decoded_whole() {
        let mut bytes = BytesMut::new();
        packet::encode(&Packet::PingResp, &mut bytes).unwrap();
        packet::encode(&Packet::PingResp, &mut bytes).unwrap();
        let (mut near, far) = tokio::io::duplex(64);
        let mut far = far;
        tokio::spawn(async move {
            far.write_all(&bytes[..1]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            far.write_all(&bytes[1..]).await.unwrap();
        });
        let mut buf = BytesMut::new();
        assert_eq!(
            read_packet(&mut near, &mut buf).await,
            Ok(Some(Packet::PingResp))
        );
        assert_eq!(
            read_packet(&mut near, &mut buf).await,
            Ok(Some(Packet::PingResp))
        );
        assert_eq!(read_packet(&mut near, &mut buf).await, Ok(None));
    }
}
