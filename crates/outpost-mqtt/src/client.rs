//! A small async MQTT 3.1.1 client over TLS, for the benchmark, the Rust SDK and tests.
//!
//! [`Client::connect`] does the TLS handshake and the CONNECT/CONNACK exchange, then hands the connection
//! to three tasks: a reader, a batching writer, and an event loop that matches acks to waiting callers,
//! acknowledges incoming QoS 1 publishes and sends PINGREQ every keep-alive period. Any number of
//! `publish` calls may wait at once; each resolves with its own PUBACK.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::io::{self, ReadError};
use crate::packet::{
    self, Connect, ConnectReturnCode, Packet, PacketError, PubAck, Publish, QoS, Subscribe,
    SubscribeReturnCode, Unsubscribe,
};

/// Largest packet the client accepts from the server.
const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;

/// Time allowed for the TLS handshake and for the CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, or the TLS handshake, failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    /// The server sent something that is not an acceptable packet.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The server refused the CONNECT.
    #[error("connection refused: {0:?}")]
    Refused(ConnectReturnCode),
    /// The server answered CONNECT with something other than CONNACK.
    #[error("expected CONNACK, got {0}")]
    UnexpectedPacket(&'static str),
    /// No CONNACK in time.
    #[error("timed out waiting for CONNACK")]
    Timeout,
    /// The connection is closed; the operation may or may not have reached the server.
    #[error("connection closed")]
    Closed,
    /// The packet cannot be encoded (a topic over 65535 bytes...).
    #[error(transparent)]
    Encode(#[from] PacketError),
    /// QoS 2 is not supported (IoT Hub refuses it).
    #[error("QoS 2 is not supported")]
    QoS2NotSupported,
}

enum Command {
    Publish(Publish, Option<oneshot::Sender<()>>),
    Subscribe(
        Vec<(String, QoS)>,
        oneshot::Sender<Vec<SubscribeReturnCode>>,
    ),
    Unsubscribe(Vec<String>, oneshot::Sender<()>),
    Disconnect,
}

/// A connected MQTT client.
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    incoming: mpsc::UnboundedReceiver<Publish>,
    session_present: bool,
    event_loop: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session_present", &self.session_present)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects over TLS and sends CONNECT; returns once the server accepted it.
    ///
    /// `server_name` is checked against the server certificate (a DNS name or an IP address).
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        addr: impl ToSocketAddrs,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
        keep_alive: u16,
        clean_session: bool,
    ) -> Result<Self, ClientError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ClientError::InvalidServerName(server_name.to_owned()))?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(tls).connect(name, tcp))
                .await
                .map_err(|_| ClientError::Timeout)??;
        let (mut reader, mut writer) = tokio::io::split(stream);

        let mut connect = Connect::new(client_id, keep_alive, clean_session);
        connect.username = username.map(str::to_owned);
        connect.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
        let mut buf = BytesMut::new();
        packet::encode(&Packet::Connect(Box::new(connect)), &mut buf)?;
        writer.write_all(&buf).await?;
        writer.flush().await?;

        buf.clear();
        let connack = tokio::time::timeout(
            CONNECT_TIMEOUT,
            io::read_packet(&mut reader, &mut buf, MAX_INCOMING_PACKET),
        )
        .await
        .map_err(|_| ClientError::Timeout)??;
        let session_present = match connack {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Accepted => {
                ack.session_present
            }
            Some(Packet::ConnAck(ack)) => return Err(ClientError::Refused(ack.code)),
            Some(other) => return Err(ClientError::UnexpectedPacket(other.name())),
            None => return Err(ClientError::Closed),
        };

        let (packets_tx, packets) = mpsc::channel(64);
        // Bounded: when the server stops reading, the loop waits on the writer instead of growing the queue.
        let (out, out_rx) = mpsc::channel(1024);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let reader = tokio::spawn(io::reader_task(
            reader,
            buf,
            MAX_INCOMING_PACKET,
            packets_tx,
        ));
        let writer = tokio::spawn(io::writer_task(writer, out_rx));
        let state = EventLoop {
            out,
            incoming: incoming_tx,
            next_pkid: 0,
            pubacks: HashMap::new(),
            subacks: HashMap::new(),
            unsubacks: HashMap::new(),
        };
        let event_loop = tokio::spawn(async move {
            state.run(commands_rx, packets, keep_alive).await;
            reader.abort();
        });
        Ok(Self {
            commands,
            incoming,
            session_present,
            event_loop,
            writer,
        })
    }

    /// Whether the server resumed a stored session (CONNACK session present).
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Publishes; at QoS 1, returns once the server's PUBACK arrived.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let publish = Publish::new(topic, qos, payload);
        // Encoding errors show here rather than in the writer, where the packet would be dropped.
        packet::encoded_len(&Packet::Publish(publish.clone()))?;
        match qos {
            QoS::AtMostOnce => self.command(Command::Publish(publish, None)),
            QoS::AtLeastOnce => {
                let (done, acked) = oneshot::channel();
                self.command(Command::Publish(publish, Some(done)))?;
                acked.await.map_err(|_| ClientError::Closed)
            }
            QoS::ExactlyOnce => Err(ClientError::QoS2NotSupported),
        }
    }

    /// Subscribes to one filter; returns what the SUBACK granted.
    pub async fn subscribe(
        &self,
        filter: impl Into<String>,
        qos: QoS,
    ) -> Result<SubscribeReturnCode, ClientError> {
        let (done, granted) = oneshot::channel();
        self.command(Command::Subscribe(vec![(filter.into(), qos)], done))?;
        let codes = granted.await.map_err(|_| ClientError::Closed)?;
        codes.first().copied().ok_or(ClientError::Closed)
    }

    /// Unsubscribes from one filter; returns once the UNSUBACK arrived.
    pub async fn unsubscribe(&self, filter: impl Into<String>) -> Result<(), ClientError> {
        let (done, acked) = oneshot::channel();
        self.command(Command::Unsubscribe(vec![filter.into()], done))?;
        acked.await.map_err(|_| ClientError::Closed)
    }

    /// The next publish from the server (QoS 1 ones are already acknowledged); `None` once the connection closed.
    pub async fn recv(&mut self) -> Option<Publish> {
        self.incoming.recv().await
    }

    /// Sends DISCONNECT and closes the connection cleanly.
    pub async fn disconnect(self) {
        let _ = self.commands.send(Command::Disconnect);
        let _ = self.event_loop.await;
        let _ = self.writer.await;
    }

    fn command(&self, command: Command) -> Result<(), ClientError> {
        self.commands.send(command).map_err(|_| ClientError::Closed)
    }
}

/// The client's protocol state, owned by its event-loop task.
struct EventLoop {
    out: mpsc::Sender<Packet>,
    incoming: mpsc::UnboundedSender<Publish>,
    next_pkid: u16,
    pubacks: HashMap<u16, oneshot::Sender<()>>,
    subacks: HashMap<u16, oneshot::Sender<Vec<SubscribeReturnCode>>>,
    unsubacks: HashMap<u16, oneshot::Sender<()>>,
}

impl EventLoop {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut packets: mpsc::Receiver<Result<Packet, ReadError>>,
        keep_alive: u16,
    ) {
        let period = Duration::from_secs(u64::from(keep_alive.max(1)));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Disconnect) => {
                        let _ = self.out.send(Packet::Disconnect).await;
                        return;
                    }
                    Some(command) => self.command(command).await,
                    // Every handle dropped: close without DISCONNECT.
                    None => return,
                },
                packet = packets.recv() => match packet {
                    Some(Ok(packet)) => self.incoming(packet).await,
                    Some(Err(e)) => return tracing::debug!(error = %e, "client connection failed"),
                    None => return,
                },
                _ = ping.tick(), if keep_alive > 0 => {
                    let _ = self.out.send(Packet::PingReq).await;
                }
            }
        }
    }

    async fn command(&mut self, command: Command) {
        let packet = match command {
            Command::Publish(publish, None) => Packet::Publish(publish),
            Command::Publish(publish, Some(done)) => {
                let pkid = self.pkid();
                self.pubacks.insert(pkid, done);
                Packet::Publish(publish.with_pkid(pkid))
            }
            Command::Subscribe(filters, done) => {
                let pkid = self.pkid();
                self.subacks.insert(pkid, done);
                Packet::Subscribe(Subscribe { pkid, filters })
            }
            Command::Unsubscribe(filters, done) => {
                let pkid = self.pkid();
                self.unsubacks.insert(pkid, done);
                Packet::Unsubscribe(Unsubscribe { pkid, filters })
            }
            Command::Disconnect => Packet::Disconnect,
        };
        let _ = self.out.send(packet).await;
    }

    /// The next packet id not waiting for an ack (1..=65535; 0 is not allowed [MQTT-2.3.1-1]).
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.pubacks.contains_key(&id)
                && !self.subacks.contains_key(&id)
                && !self.unsubacks.contains_key(&id)
            {
                return id;
            }
        }
    }

    async fn incoming(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(publish) => {
                let ack = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
                let _ = self.incoming.send(publish);
                if let Some(pkid) = ack {
                    let _ = self.out.send(Packet::PubAck(PubAck { pkid })).await;
                }
            }
            Packet::PubAck(ack) => {
                if let Some(done) = self.pubacks.remove(&ack.pkid) {
                    let _ = done.send(());
                }
            }
            Packet::SubAck(ack) => {
                if let Some(done) = self.subacks.remove(&ack.pkid) {
                    let _ = done.send(ack.return_codes);
                }
            }
            Packet::UnsubAck(ack) => {
                if let Some(done) = self.unsubacks.remove(&ack.pkid) {
                    let _ = done.send(());
                }
            }
            other => tracing::debug!(packet = other.name(), "client ignores packet"),
        }
    }
}
