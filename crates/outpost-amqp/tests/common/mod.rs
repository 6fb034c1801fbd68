//! What the AMQP head's tests share: an in-memory [`ServiceBackend`], a self-signed TLS pair, a running
//! server, and fe2o3-amqp client helpers (connect, put a token on `$cbs`, ask `$management`).
//!
//! [`MemoryHub`] stands for the hub's storage and policies (the hub's own implementation is tested in
//! outpost-hub against its real store); it holds a few events per partition, tokens (`good`,
//! `no-service-connect`, `expired`, `short`, and any SAS token whose signature is `good`), one PLAIN credential (`service` / `key`), and devices `d1` and `full`
//! (whose queue is full).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender};
use outpost_amqp::{
    AuthError, BackendError, C2dMessage, Event, EventHubInfo, EventPosition, FeedbackBatch, Grant,
    PartitionInfo, ServiceBackend,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio_rustls::TlsConnector;

pub const HUB: &str = "myhub";
pub const HOST: &str = "localhost";
pub const PARTITIONS: u32 = 2;
/// How long the token `short` lasts.
pub const SHORT_TOKEN: Duration = Duration::from_millis(300);

/// The in-memory hub.
pub struct MemoryHub {
    partitions: Vec<Mutex<Vec<Event>>>,
    appended: Notify,
    pub c2d: Mutex<Vec<C2dMessage>>,
    feedback: Mutex<VecDeque<FeedbackBatch>>,
    feedback_ready: Notify,
    pub completed: Mutex<Vec<i64>>,
    /// Woken when a feedback batch is completed.
    pub completion: Notify,
}

impl MemoryHub {
    /// Partition 0 holds three events (offsets 0, 100, 200, enqueued at 1000, 2000, 3000 ms); partition 1
    /// is empty.
    pub fn new() -> Self {
        let hub = Self {
            partitions: (0..PARTITIONS).map(|_| Mutex::new(Vec::new())).collect(),
            appended: Notify::new(),
            c2d: Mutex::new(Vec::new()),
            feedback: Mutex::new(VecDeque::new()),
            feedback_ready: Notify::new(),
            completed: Mutex::new(Vec::new()),
            completion: Notify::new(),
        };
        for i in 0..3 {
            hub.append(0, format!("e{i}").as_bytes());
        }
        hub
    }

    /// Appends an event to `partition` and wakes its readers; returns its sequence number.
    pub fn append(&self, partition: u32, body: &[u8]) -> i64 {
        let mut events = self.partitions[partition as usize].lock().unwrap();
        let sequence_number = events.len() as i64;
        events.push(Event {
            sequence_number,
            offset: sequence_number * 100,
            enqueued_time_ms: (sequence_number + 1) * 1000,
            body: body.to_vec(),
            message_id: Some(format!("m{sequence_number}")),
            correlation_id: Some("c".into()),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            user_id: None,
            application_properties: vec![(
                "temperature".into(),
                outpost_amqp::Value::String("21".into()),
            )],
            annotations: vec![
                (
                    "iothub-connection-device-id".into(),
                    outpost_amqp::Value::String("d1".into()),
                ),
                (
                    "iothub-message-source".into(),
                    outpost_amqp::Value::String("Telemetry".into()),
                ),
            ],
        });
        drop(events);
        self.appended.notify_waiters();
        sequence_number
    }

    pub fn add_feedback(&self, lock_token: i64, body: &str) {
        self.feedback.lock().unwrap().push_back(FeedbackBatch {
            lock_token,
            body: body.as_bytes().to_vec(),
            enqueued_time_ms: 5000,
        });
        self.feedback_ready.notify_waiters();
    }

    fn grant(service_connect: bool, expires_at: Option<SystemTime>) -> Grant {
        Grant {
            policy: "service".into(),
            service_connect,
            expires_at,
        }
    }

    fn events_after(&self, partition: u32, after: i64, max: usize) -> Vec<Event> {
        self.partitions[partition as usize]
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.sequence_number > after)
            .take(max)
            .cloned()
            .collect()
    }
}

#[async_trait::async_trait]
impl ServiceBackend for MemoryHub {
    fn authorize_token(&self, _audience: &str, token: &str) -> Result<Grant, AuthError> {
        let later = SystemTime::now() + Duration::from_hours(1);
        match token {
            "good" => Ok(Self::grant(true, Some(later))),
            "no-service-connect" => Ok(Self::grant(false, Some(later))),
            sas if sas.starts_with("SharedAccessSignature ") && sas.contains("&sig=good") => {
                Ok(Self::grant(true, Some(later)))
            }
            "short" => Ok(Self::grant(true, Some(SystemTime::now() + SHORT_TOKEN))),
            "expired" => Ok(Self::grant(
                true,
                Some(SystemTime::now() - Duration::from_secs(1)),
            )),
            _ => Err(AuthError("the token's signature does not match".into())),
        }
    }

    fn authorize_plain(&self, user: &str, password: &str) -> Result<Grant, AuthError> {
        if user == "service" && password == "key" {
            Ok(Self::grant(true, None))
        } else {
            Err(AuthError("wrong key".into()))
        }
    }

    fn event_hub(&self) -> EventHubInfo {
        EventHubInfo {
            name: HUB.into(),
            created_at_ms: 1_600_000_000_000,
            partition_count: PARTITIONS,
        }
    }

    fn consumer_group_exists(&self, name: &str) -> bool {
        name == "$Default" || name == "analytics"
    }

    fn partition_info(&self, partition: u32) -> Result<PartitionInfo, BackendError> {
        let events = self.partitions[partition as usize].lock().unwrap();
        let last = events.last();
        Ok(PartitionInfo {
            begin_sequence_number: 0,
            last_enqueued_sequence_number: last.map_or(-1, |e| e.sequence_number),
            last_enqueued_offset: last.map_or(-1, |e| e.offset),
            last_enqueued_time_ms: last.map_or(0, |e| e.enqueued_time_ms),
            is_empty: events.is_empty(),
        })
    }

    fn resolve_position(
        &self,
        partition: u32,
        position: EventPosition,
    ) -> Result<i64, BackendError> {
        let events = self.partitions[partition as usize].lock().unwrap();
        let last = events.last().map_or(-1, |e| e.sequence_number);
        Ok(match position {
            EventPosition::Earliest => -1,
            EventPosition::Latest => last,
            EventPosition::Offset { offset, inclusive } => {
                let found = events.iter().find(|e| e.offset >= offset);
                match found {
                    Some(e) if inclusive || e.offset > offset => e.sequence_number - 1,
                    Some(e) => e.sequence_number,
                    None => last,
                }
            }
            EventPosition::SequenceNumber {
                sequence_number,
                inclusive,
            } => {
                if inclusive {
                    sequence_number - 1
                } else {
                    sequence_number
                }
            }
            EventPosition::EnqueuedTime { ms } => events
                .iter()
                .take_while(|e| e.enqueued_time_ms <= ms)
                .last()
                .map_or(-1, |e| e.sequence_number),
        })
    }

    async fn wait_events(
        &self,
        partition: u32,
        after: i64,
        max: usize,
    ) -> Result<Vec<Event>, BackendError> {
        loop {
            let appended = self.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let events = self.events_after(partition, after, max);
            if !events.is_empty() {
                return Ok(events);
            }
            appended.await;
        }
    }

    async fn send_c2d(&self, _grant: &Grant, message: C2dMessage) -> Result<(), BackendError> {
        match message.device_id.as_str() {
            "d1" => {
                self.c2d.lock().unwrap().push(message);
                Ok(())
            }
            "full" => Err(BackendError::LimitExceeded(
                "the device's queue is full".into(),
            )),
            other => Err(BackendError::NotFound(format!("no device {other}"))),
        }
    }

    async fn next_feedback(&self) -> Result<FeedbackBatch, BackendError> {
        loop {
            let ready = self.feedback_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let completed = self.completed.lock().unwrap().clone();
            let next = self
                .feedback
                .lock()
                .unwrap()
                .iter()
                .find(|b| !completed.contains(&b.lock_token))
                .cloned();
            if let Some(batch) = next {
                return Ok(batch);
            }
            ready.await;
        }
    }

    fn complete_feedback(&self, lock_token: i64) -> Result<(), BackendError> {
        self.completed.lock().unwrap().push(lock_token);
        self.completion.notify_waiters();
        self.feedback
            .lock()
            .unwrap()
            .retain(|b| b.lock_token != lock_token);
        Ok(())
    }
}

/// A self-signed certificate for localhost, as server and client TLS configurations.
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl Tls {
    pub fn new() -> Self {
        // The library installs no crypto provider; a test process installs ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certified = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
        let cert: CertificateDer<'static> = certified.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }
}

/// A running AMQP head over a [`MemoryHub`]; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub hub: Arc<MemoryHub>,
    pub tls: Tls,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Gives the server streams set up elsewhere (as the HTTPS listener does for AMQP over WebSocket).
    pub handoff: outpost_amqp::StreamHandoff,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut outpost_amqp::AmqpConfig)) -> Self {
        let tls = Tls::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = outpost_amqp::AmqpConfig::new(tls.server.clone(), HOST);
        configure(&mut config);
        let hub = Arc::new(MemoryHub::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let (handoff, handed) = outpost_amqp::handoff();
        let served = tokio::spawn(outpost_amqp::serve_with_handoff(
            listener,
            config,
            hub.clone(),
            handed,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            hub,
            tls,
            stop: Some(stop),
            served: Some(served),
            handoff,
        }
    }

    /// A TLS stream to the server.
    pub async fn tls_stream(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        TlsConnector::from(self.tls.client.clone())
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap()
    }

    /// An AMQP connection with `sasl`, and a session on it.
    pub async fn connect(&self, sasl: SaslProfile) -> Client {
        self.try_connect(sasl).await.unwrap()
    }

    pub async fn try_connect(
        &self,
        sasl: SaslProfile,
    ) -> Result<Client, fe2o3_amqp::connection::OpenError> {
        let stream = self.tls_stream().await;
        Self::open(stream, sasl).await
    }

    /// An AMQP connection with `sasl` over `stream`, and a session on it.
    pub async fn open(
        stream: impl tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + std::fmt::Debug
            + Send
            + Unpin
            + 'static,
        sasl: SaslProfile,
    ) -> Result<Client, fe2o3_amqp::connection::OpenError> {
        let mut connection = Connection::builder()
            .container_id("test-client")
            .hostname(HOST)
            .sasl_profile(sasl)
            .open_with_stream(stream)
            .await?;
        let session = fe2o3_amqp::Session::begin(&mut connection).await.unwrap();
        Ok(Client {
            connection,
            session,
            next_id: 0,
        })
    }
}

impl Server {
    /// Fires the shutdown signal and waits for `serve` to return.
    pub async fn shut_down(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.served.take().unwrap().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A client connection with one session.
pub struct Client {
    pub connection: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
    next_id: u64,
}

/// The parts of a `$cbs` or `$management` answer a test looks at.
#[derive(Debug)]
pub struct Answer {
    pub status: i32,
    pub description: String,
    pub correlation_id: Option<MessageId>,
    pub body: Option<Value>,
}

impl Client {
    /// Sends one request to `node` (`$cbs`, `$management`) and reads its answer.
    pub async fn request(
        &mut self,
        node: &str,
        properties: &[(&str, &str)],
        body: Option<&str>,
    ) -> (MessageId, Answer) {
        self.next_id += 1;
        let id = MessageId::Ulong(self.next_id);
        let reply_to = format!("{node}-reply-{}", self.next_id);
        let mut sender = Sender::attach(
            &mut self.session,
            format!("{node}-sender-{}", self.next_id),
            node,
        )
        .await
        .unwrap();
        let mut receiver = Receiver::builder()
            .name(format!("{node}-receiver-{}", self.next_id))
            .source(node)
            .target(reply_to.as_str())
            .attach(&mut self.session)
            .await
            .unwrap();
        let application: OrderedMap<String, SimpleValue> = properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SimpleValue::String((*v).to_owned())))
            .collect();
        let message = Message::builder()
            .properties(Properties {
                message_id: Some(id.clone()),
                reply_to: Some(reply_to.clone()),
                ..Properties::default()
            })
            .application_properties(ApplicationProperties(application))
            .body(body.map_or(Body::Empty, |b| {
                Body::Value(AmqpValue(Value::String(b.to_owned())))
            }))
            .build();
        sender.send(message).await.unwrap();
        let delivery = receiver.recv::<Body<Value>>().await.unwrap();
        receiver.accept(&delivery).await.unwrap();
        let message = delivery.into_message();
        let ApplicationProperties(application) = message.application_properties.unwrap();
        let status = match application.get("status-code") {
            Some(SimpleValue::Int(n)) => *n,
            other => panic!("status-code is not an int: {other:?}"),
        };
        let description = match application.get("status-description") {
            Some(SimpleValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        let body = match message.body {
            Body::Value(AmqpValue(value)) => Some(value),
            _ => None,
        };
        let answer = Answer {
            status,
            description,
            correlation_id: message.properties.and_then(|p| p.correlation_id),
            body,
        };
        sender.close().await.unwrap();
        receiver.close().await.unwrap();
        (id, answer)
    }

    /// Puts `token` for `audience` on `$cbs`; the answer's status.
    pub async fn put_token(&mut self, audience: &str, token: &str) -> i32 {
        let (_, answer) = self
            .request(
                "$cbs",
                &[
                    ("operation", "put-token"),
                    ("type", "servicebus.windows.net:sastoken"),
                    ("name", audience),
                    ("expiration", "9999999999"),
                ],
                Some(token),
            )
            .await;
        answer.status
    }
}
