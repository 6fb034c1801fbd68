//! The protocol head of the Device Provisioning Service (DPS) over MQTT, as azure-iot-device's
//! `ProvisioningDeviceClient` speaks it (the topics and bodies are `outpost_core::provisioning`).
//!
//! It shares the packet codec, the reader and the TLS of the IoT Hub head but not its session: a provisioning
//! client subscribes to one filter, publishes requests and reads their answers, nothing more. Read
//! [`ProvisioningSession`] first (pure: packets in, [`Step`]s out), then [`serve`], one task per connection
//! that runs each request through [`ProvisioningOperations`] before reading the next, so a connection has at
//! most one request in progress and what a client can make the server hold is bounded by the connection cap.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use outpost_core::provisioning::{self, ProvisioningRequest, RESPONSE_FILTER};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::io;
use crate::ops::ConnectRefusal;
use crate::packet::{
    self, ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck,
    SubscribeReturnCode, UnsubAck, PROTOCOL_LEVEL_3_1_1,
};
use crate::server::tls;

/// The largest packet a provisioning client may send: a registration body with a custom payload is a few
/// kilobytes; DPS itself refuses payloads past a few KiB.
pub const MAX_PACKET_SIZE: usize = 16 * 1024;

/// How long one write to a client may take before the connection is dropped (a client that does not read).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the provisioning head needs from the service that owns enrollments and registrations.
#[async_trait::async_trait]
pub trait ProvisioningOperations: Send + Sync + 'static {
    /// What a successful CONNECT proved (the registration and the enrollment it belongs to), handed back
    /// with every request of the connection.
    type Credential: Send + Sync + 'static;
    /// Checks a CONNECT of `registration_id` in `id_scope`; `password` is the registration's SAS token, and
    /// `client_chain` the certificate chain (leaf first) the client presented at the TLS handshake, empty when
    /// it presented none (X.509 attestation: a CONNECT without a password).
    async fn authenticate(
        &self,
        id_scope: &str,
        registration_id: &str,
        password: Option<&[u8]>,
        client_chain: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self::Credential, ConnectRefusal>;
    /// Runs a registration request (its body as received) of the connected client.
    async fn register(&self, credential: &Self::Credential, body: &[u8]) -> ProvisioningAnswer;
    /// Answers an operation-status request of the connected client.
    async fn operation_status(
        &self,
        credential: &Self::Credential,
        operation_id: &str,
    ) -> ProvisioningAnswer;
}

/// An answer to publish on `$dps/registrations/res/{status}/?$rid=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningAnswer {
    /// HTTP-like status: 200 (final), 202 (assigning), 4xx refusals, 429 and 5xx (the SDK retries).
    pub status: u16,
    /// Seconds the client should wait before it asks again.
    pub retry_after: Option<u32>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// What a connection does next, as the session decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this packet.
    Send(Packet),
    /// Run a request and publish its answer (if the client listens) with this request id.
    Run(ProvisioningRequest, bytes::Bytes),
    /// Close the connection (the client broke the protocol, or said DISCONNECT).
    Close(&'static str),
}

/// One connected provisioning client after its CONNECT: whether it listens for answers, and what each packet
/// it sends asks for. No I/O, no clock.
#[derive(Debug, Default)]
pub struct ProvisioningSession {
    subscribed: bool,
}

impl ProvisioningSession {
    /// Whether the client subscribed to its answers.
    pub fn listens(&self) -> bool {
        self.subscribed
    }

    /// What to do with a packet from the client.
    pub fn handle(&mut self, packet: Packet) -> Vec<Step> {
        match packet {
            Packet::Subscribe(subscribe) => {
                let return_codes = subscribe
                    .filters
                    .iter()
                    .map(|(filter, qos)| {
                        if filter == RESPONSE_FILTER {
                            self.subscribed = true;
                            SubscribeReturnCode::Success((*qos).min(QoS::AtLeastOnce))
                        } else {
                            SubscribeReturnCode::Failure
                        }
                    })
                    .collect();
                vec![Step::Send(Packet::SubAck(SubAck {
                    pkid: subscribe.pkid,
                    return_codes,
                }))]
            }
            Packet::Unsubscribe(unsubscribe) => {
                if unsubscribe.filters.iter().any(|f| f == RESPONSE_FILTER) {
                    self.subscribed = false;
                }
                vec![Step::Send(Packet::UnsubAck(UnsubAck {
                    pkid: unsubscribe.pkid,
                }))]
            }
            Packet::Publish(publish) => {
                if publish.qos == QoS::ExactlyOnce {
                    return vec![Step::Close("QoS 2 is not supported")];
                }
                let Ok(request) = ProvisioningRequest::parse(&publish.topic) else {
                    // DPS closes a connection that publishes elsewhere.
                    return vec![Step::Close(
                        "publish to a topic that is not a provisioning request",
                    )];
                };
                let mut steps = Vec::with_capacity(2);
                if publish.qos == QoS::AtLeastOnce {
                    steps.push(Step::Send(Packet::PubAck(PubAck { pkid: publish.pkid })));
                }
                steps.push(Step::Run(request, publish.payload));
                steps
            }
            Packet::PingReq => vec![Step::Send(Packet::PingResp)],
            // A PUBACK of an answer: answers go at QoS 0, so there is nothing to settle.
            Packet::PubAck(_) => Vec::new(),
            Packet::Disconnect => vec![Step::Close("DISCONNECT")],
            // [MQTT-3.1.0-2] a second CONNECT, or a packet only a server sends.
            _ => vec![Step::Close("unexpected packet")],
        }
    }
}

/// The answer's PUBLISH for a request id.
pub fn answer_packet(rid: &str, answer: &ProvisioningAnswer) -> Packet {
    Packet::Publish(Publish::new(
        provisioning::response_topic(answer.status, rid, answer.retry_after),
        QoS::AtMostOnce,
        answer.body.clone(),
    ))
}

/// How the provisioning listener runs.
#[derive(Clone)]
pub struct ProvisioningConfig {
    /// TLS (the hub's certificate, which names the provisioning host too); a configuration that requests client
    /// certificates lets devices attest with X.509.
    pub tls: Arc<rustls::ServerConfig>,
    /// Time allowed for the TLS handshake, and then for the CONNECT.
    pub connect_timeout: Duration,
    /// Connections served at once; past this, accepting waits.
    pub max_connections: usize,
}

impl ProvisioningConfig {
    /// The defaults around a TLS configuration.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tls,
            connect_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// Accepts provisioning clients until `shutdown` fires; each connection then closes within a few seconds.
pub async fn serve<O: ProvisioningOperations>(
    listener: TcpListener,
    config: ProvisioningConfig,
    ops: Arc<O>,
    shutdown: impl Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let config = Arc::new(config);
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&limit).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "provisioning accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (config, ops, stopped) = (config.clone(), ops.clone(), stopped.clone());
        connections.spawn(async move {
            run(&config, &*ops, tcp, peer, stopped).await;
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!("provisioning connections still open after 10 s; aborting them");
    }
}

/// Serves one TCP connection until it closes.
async fn run<O: ProvisioningOperations>(
    config: &ProvisioningConfig,
    ops: &O,
    tcp: TcpStream,
    peer: SocketAddr,
    stopped: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let accepted = tokio::time::timeout(
        config.connect_timeout,
        tls::accept(tcp, Arc::clone(&config.tls)),
    )
    .await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let client_chain: Vec<_> = stream.peer_certificates().unwrap_or_default().to_vec();
    if let Err(reason) = serve_stream(config, ops, stream, &client_chain, stopped).await {
        tracing::debug!(%peer, reason, "provisioning connection closed");
    }
}

/// CONNECT, then the session until the client leaves, breaks the protocol or the server stops.
async fn serve_stream<O: ProvisioningOperations, S: AsyncRead + AsyncWrite + Unpin>(
    config: &ProvisioningConfig,
    ops: &O,
    stream: S,
    client_chain: &[rustls::pki_types::CertificateDer<'static>],
    mut stopped: watch::Receiver<bool>,
) -> Result<(), &'static str> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = BytesMut::new();
    let first = tokio::time::timeout(
        config.connect_timeout,
        io::read_packet(&mut reader, &mut buf, MAX_PACKET_SIZE),
    )
    .await;
    let Ok(Ok(Some(Packet::Connect(connect)))) = first else {
        return Err("no CONNECT");
    };
    let credential = match authenticate(ops, &connect, client_chain).await {
        Ok(credential) => credential,
        Err(code) => {
            send(
                &mut writer,
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                }),
            )
            .await?;
            let _ = writer.shutdown().await;
            return Err("CONNECT refused");
        }
    };
    send(
        &mut writer,
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }),
    )
    .await?;
    // [MQTT-3.1.2-24] one and a half keep-alive periods without a packet end the connection; a client
    // without keep-alive still gets closed after a while, since registering takes seconds.
    let idle = match connect.keep_alive {
        0 => Duration::from_mins(5),
        seconds => Duration::from_millis(u64::from(seconds) * 1500),
    };
    let mut session = ProvisioningSession::default();
    loop {
        let packet = tokio::select! {
            _ = stopped.changed() => return Ok(()),
            read = tokio::time::timeout(idle, io::read_packet(&mut reader, &mut buf, MAX_PACKET_SIZE)) => match read {
                Err(_) => return Err("keep-alive expired"),
                Ok(Err(_)) => return Err("malformed packet or read failure"),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(packet))) => packet,
            },
        };
        for step in session.handle(packet) {
            match step {
                Step::Send(packet) => send(&mut writer, &packet).await?,
                Step::Close(reason) => {
                    let _ = writer.shutdown().await;
                    return if reason == "DISCONNECT" {
                        Ok(())
                    } else {
                        Err(reason)
                    };
                }
                Step::Run(request, body) => {
                    let (rid, answer) = match &request {
                        ProvisioningRequest::Register { rid } => {
                            (rid, ops.register(&credential, &body).await)
                        }
                        ProvisioningRequest::OperationStatus { rid, operation_id } => {
                            (rid, ops.operation_status(&credential, operation_id).await)
                        }
                    };
                    if session.listens() {
                        send(&mut writer, &answer_packet(rid, &answer)).await?;
                    }
                }
            }
        }
    }
}

/// Checks a CONNECT: MQTT 3.1.1, the client id a registration id, the user name naming it, and the backend's
/// verdict on the token or the client certificate chain.
async fn authenticate<O: ProvisioningOperations>(
    ops: &O,
    connect: &Connect,
    client_chain: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<O::Credential, ConnectReturnCode> {
    if connect.protocol_level != PROTOCOL_LEVEL_3_1_1 {
        return Err(ConnectReturnCode::UnacceptableProtocolVersion);
    }
    provisioning::validate_registration_id(&connect.client_id)
        .map_err(|_| ConnectReturnCode::IdentifierRejected)?;
    let username = connect
        .username
        .as_deref()
        .ok_or(ConnectReturnCode::BadUserNameOrPassword)?;
    let (scope, registration) = provisioning::parse_username(username)
        .map_err(|_| ConnectReturnCode::BadUserNameOrPassword)?;
    if registration != connect.client_id {
        return Err(ConnectReturnCode::BadUserNameOrPassword);
    }
    ops.authenticate(
        scope,
        registration,
        connect.password.as_deref(),
        client_chain,
    )
    .await
    .map_err(ConnectRefusal::return_code)
}

/// Writes one packet, bounded in time.
async fn send<W: AsyncWrite + Unpin>(writer: &mut W, packet: &Packet) -> Result<(), &'static str> {
    let mut buf = BytesMut::new();
    packet::encode(packet, &mut buf).map_err(|_| "cannot encode an answer")?;
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        writer.write_all(&buf).await?;
        writer.flush().await
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("write failed"),
        Err(_) => Err("the client does not read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Subscribe, Unsubscribe};

    fn register_publish(qos: QoS) -> Packet {
        Packet::Publish(
            Publish::new(
                "$dps/registrations/PUT/iotdps-register/?$rid=1",
                qos,
                &b"{}"[..],
            )
            .with_pkid(7),
        )
    }

    #[test]
    fn subscribing_to_the_answers_is_granted_and_anything_else_refused() {
        let mut session = ProvisioningSession::default();
        let steps = session.handle(Packet::Subscribe(Subscribe {
            pkid: 3,
            filters: vec![
                (RESPONSE_FILTER.into(), QoS::AtLeastOnce),
                ("devices/x/#".into(), QoS::AtMostOnce),
            ],
        }));
        assert_eq!(
            steps,
            vec![Step::Send(Packet::SubAck(SubAck {
                pkid: 3,
                return_codes: vec![
                    SubscribeReturnCode::Success(QoS::AtLeastOnce),
                    SubscribeReturnCode::Failure
                ]
            }))]
        );
        assert!(session.listens());
        session.handle(Packet::Unsubscribe(Unsubscribe {
            pkid: 4,
            filters: vec![RESPONSE_FILTER.into()],
        }));
        assert!(!session.listens());
    }

    #[test]
    fn a_qos1_registration_is_acknowledged_then_run() {
        let mut session = ProvisioningSession::default();
        let steps = session.handle(register_publish(QoS::AtLeastOnce));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0], Step::Send(Packet::PubAck(PubAck { pkid: 7 })));
        assert!(matches!(
            &steps[1],
            Step::Run(ProvisioningRequest::Register { rid }, body) if rid == "1" && &body[..] == b"{}"
        ));
    }

    #[test]
    fn a_publish_elsewhere_or_at_qos2_closes_the_connection() {
        let mut session = ProvisioningSession::default();
        let elsewhere = Packet::Publish(Publish::new(
            "devices/d/messages/events/",
            QoS::AtMostOnce,
            &b""[..],
        ));
        assert!(matches!(session.handle(elsewhere)[..], [Step::Close(_)]));
        assert!(matches!(
            session.handle(register_publish(QoS::ExactlyOnce))[..],
            [Step::Close(_)]
        ));
    }

    #[test]
    fn answers_go_to_the_response_topic_with_rid_and_retry_after() {
        let packet = answer_packet(
            "5",
            &ProvisioningAnswer {
                status: 202,
                retry_after: Some(1),
                body: b"{}".to_vec(),
            },
        );
        let Packet::Publish(publish) = packet else {
            panic!()
        };
        assert_eq!(
            publish.topic,
            "$dps/registrations/res/202/?$rid=5&retry-after=1"
        );
        assert_eq!(publish.qos, QoS::AtMostOnce);
    }
}
