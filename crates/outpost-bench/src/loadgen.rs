//! The load of the routed benchmarks: bare MQTT 3.1.1 publishers and subscribers built on `outpost_mqtt`'s
//! packet codec, over plain TCP or TLS, so that the same clients load the edge hub and mosquitto.
//!
//! A publisher keeps up to `window` QoS 1 publishes unacknowledged, or paces itself at a rate; every payload
//! carries a [`Stamp`] (phase, sequence, send time, the time it was due) so that a subscriber measures latency on
//! arrival, tells the messages a paced publisher sent late from those it sent on schedule, and ignores messages
//! left over from an earlier phase.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Bytes, BytesMut};
use outpost_mqtt::{ConnectReturnCode, Packet, PubAck, Publish, QoS, Subscribe};
use rustls::pki_types::ServerName;
use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// Largest packet a bench client accepts.
const MAX_PACKET: usize = 1 << 20;

/// Time allowed for TCP, TLS and CONNACK/SUBACK.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a publisher waits for its last PUBACKs after its sending time is over.
const ACK_GRACE: Duration = Duration::from_secs(20);

/// Publishes encoded into one write at most.
const WRITE_BATCH: usize = 64;

/// Nanoseconds since the harness's first call: the clock of every [`Stamp`].
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What a payload starts with: the phase it belongs to, its sequence number, when it was sent and when it was due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The measurement phase (a subscriber counts only its own phase).
    pub phase: u32,
    /// Sequence number within the publisher.
    pub seq: u64,
    /// [`now_ns`] when the publish was encoded.
    pub sent_ns: u64,
    /// [`now_ns`] when a paced publisher's schedule had it due; `sent_ns` for one that is not paced.
    pub due_ns: u64,
}

/// How far behind its schedule a paced publish may be encoded and still count as on schedule: the pacer sleeps
/// between sends, and tokio's timer rounds a sleep up to the millisecond.
pub const ON_SCHEDULE: Duration = Duration::from_millis(2);

impl Stamp {
    /// Bytes the stamp takes at the start of a payload.
    pub const LEN: usize = 28;

    /// A payload of `size` bytes (at least [`Stamp::LEN`]) that starts with this stamp.
    pub fn payload(self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size.max(Self::LEN));
        out.extend_from_slice(&self.phase.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_ns.to_be_bytes());
        out.extend_from_slice(&self.due_ns.to_be_bytes());
        out.resize(size.max(Self::LEN), b'x');
        out
    }

    /// The stamp at the start of `payload`, if it is long enough.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let phase = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
        let seq = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
        let sent_ns = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
        let due_ns = u64::from_be_bytes(payload.get(20..28)?.try_into().ok()?);
        Some(Self {
            phase,
            seq,
            sent_ns,
            due_ns,
        })
    }

    /// How long after it was due the publish was encoded: time its publisher spent waiting (for its window of
    /// unacknowledged publishes, or for the CPU) while behind its schedule.
    pub fn behind(self) -> Duration {
        Duration::from_nanos(self.sent_ns.saturating_sub(self.due_ns))
    }
}

/// How many messages a paced sender should have sent `elapsed` into its run at `rate` per second.
pub fn due(elapsed: Duration, rate: f64) -> u64 {
    (elapsed.as_secs_f64() * rate).floor().max(0.0) as u64
}

/// When the message numbered `seq` (from 0) of a sender paced at `rate` per second falls due, `started_ns` being
/// its start: the first instant [`due`] counts it.
pub fn due_at_ns(started_ns: u64, seq: u64, rate: f64) -> u64 {
    started_ns + ((seq + 1) as f64 * 1e9 / rate).ceil() as u64
}

/// The packet identifier after `pkid` (1..=65535; 0 is not a valid identifier).
pub fn next_pkid(pkid: u16) -> u16 {
    if pkid == u16::MAX {
        1
    } else {
        pkid + 1
    }
}

/// Any byte stream a client runs over (plain TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Where a broker listens and how to reach it.
#[derive(Clone)]
pub struct Broker {
    /// TCP address.
    pub addr: SocketAddr,
    /// TLS settings and the server name to check, or `None` for plain TCP.
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
}

impl Broker {
    /// A TLS client configuration that trusts the CA certificates in `pem`.
    pub fn tls_config(pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(certificate.context("CA file is not PEM")?)?;
        }
        Ok(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}

/// What a client presents in its CONNECT.
#[derive(Debug, Clone)]
pub struct Login {
    /// Client identifier.
    pub client_id: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Password (a SAS token for Outpost), if any.
    pub password: Option<String>,
    /// Keep-alive in seconds (0: none; rumqttd refuses 0). The clients send no PINGREQ, so it must outlast the
    /// longest phase.
    pub keep_alive: u16,
}

/// An open MQTT connection, split.
struct Connection {
    reader: ReadHalf<Box<dyn Stream>>,
    writer: WriteHalf<Box<dyn Stream>>,
    buf: BytesMut,
}

async fn open(broker: &Broker, login: &Login) -> anyhow::Result<Connection> {
    let tcp = TcpStream::connect(broker.addr)
        .await
        .with_context(|| format!("cannot connect to {}", broker.addr))?;
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Stream> = match &broker.tls {
        None => Box::new(tcp),
        Some((config, name)) => {
            let name = ServerName::try_from(name.clone())?;
            Box::new(
                TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await?,
            )
        }
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut connect = outpost_mqtt::Connect::new(login.client_id.clone(), login.keep_alive, true);
    connect.username.clone_from(&login.username);
    connect.password = login.password.clone().map(|p| Bytes::from(p.into_bytes()));
    let mut out = BytesMut::new();
    outpost_mqtt::encode(&Packet::Connect(Box::new(connect)), &mut out)?;
    writer.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    match read_packet(&mut reader, &mut buf).await? {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => {}
        Packet::ConnAck(ack) => bail!("{} refused: {:?}", login.client_id, ack.code),
        other => bail!("expected CONNACK, got {}", other.name()),
    }
    Ok(Connection {
        reader,
        writer,
        buf,
    })
}

async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> anyhow::Result<Packet> {
    loop {
        if let Some(packet) = outpost_mqtt::decode(buf, MAX_PACKET)? {
            return Ok(packet);
        }
        if reader.read_buf(buf).await? == 0 {
            bail!("the broker closed the connection");
        }
    }
}

/// What one publisher is to do.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Topic of every publish.
    pub topic: String,
    /// Payload size in bytes.
    pub size: usize,
    /// Unacknowledged publishes allowed at once.
    pub window: usize,
    /// Messages per second, or `None` for as fast as the window allows.
    pub rate: Option<f64>,
    /// How long to send.
    pub duration: Duration,
    /// Phase written into every stamp.
    pub phase: u32,
    /// Stop after this many messages (the backlog), if set.
    pub count: Option<u64>,
}

/// What a publisher did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    /// Publishes written.
    pub sent: u64,
    /// PUBACKs received.
    pub acked: u64,
    /// From the first publish to the last PUBACK.
    pub elapsed: Duration,
}

/// A connected publisher, ready to run a plan.
pub struct Publisher {
    connection: Connection,
}

impl Publisher {
    /// Connects.
    pub async fn connect(broker: &Broker, login: &Login) -> anyhow::Result<Self> {
        let connection = tokio::time::timeout(OPEN_TIMEOUT, open(broker, login))
            .await
            .map_err(|_| anyhow!("{} could not connect in time", login.client_id))??;
        Ok(Self { connection })
    }

    /// Runs the plan, then disconnects.
    pub async fn run(self, plan: PublishPlan) -> anyhow::Result<Published> {
        let Connection {
            mut reader,
            mut writer,
            mut buf,
        } = self.connection;
        let window = Arc::new(Semaphore::new(plan.window.max(1)));
        let acked = Arc::new(AtomicU64::new(0));
        let acks = {
            let window = Arc::clone(&window);
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                loop {
                    match read_packet(&mut reader, &mut buf).await {
                        Ok(Packet::PubAck(_)) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            window.add_permits(1);
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            })
        };
        let started = Instant::now();
        let started_ns = now_ns();
        let deadline = started + plan.duration;
        let limit = plan.count.unwrap_or(u64::MAX);
        let mut sent = 0_u64;
        let mut pkid = 0_u16;
        let mut out = BytesMut::new();
        while sent < limit && Instant::now() < deadline {
            let mut allowed = limit - sent;
            if let Some(rate) = plan.rate {
                let due = due(started.elapsed(), rate).saturating_sub(sent);
                if due == 0 {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                    continue;
                }
                allowed = allowed.min(due);
            }
            let Ok(Ok(permit)) =
                tokio::time::timeout_at(deadline.into(), Arc::clone(&window).acquire_owned()).await
            else {
                break;
            };
            permit.forget();
            let mut batch = 1_u64;
            while batch < allowed.min(WRITE_BATCH as u64) {
                match window.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        batch += 1;
                    }
                    Err(_) => break,
                }
            }
            out.clear();
            for _ in 0..batch {
                pkid = next_pkid(pkid);
                let sent_ns = now_ns();
                let stamp = Stamp {
                    phase: plan.phase,
                    seq: sent,
                    sent_ns,
                    due_ns: plan
                        .rate
                        .map_or(sent_ns, |rate| due_at_ns(started_ns, sent, rate)),
                };
                let mut publish = Publish::new(
                    plan.topic.clone(),
                    QoS::AtLeastOnce,
                    stamp.payload(plan.size),
                );
                publish.pkid = pkid;
                outpost_mqtt::encode(&Packet::Publish(publish), &mut out)?;
                sent += 1;
            }
            writer.write_all(&out).await?;
        }
        let grace = Instant::now() + ACK_GRACE;
        while acked.load(Ordering::Relaxed) < sent && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        acks.abort();
        out.clear();
        outpost_mqtt::encode(&Packet::Disconnect, &mut out)?;
        let _ = writer.write_all(&out).await;
        let _ = writer.shutdown().await;
        Ok(Published {
            sent,
            acked: acked.load(Ordering::Relaxed),
            elapsed,
        })
    }
}

/// Shared between a phase's subscribers and whoever runs the phase.
#[derive(Default)]
pub struct Tally {
    /// Messages of the phase received by all subscribers together.
    pub received: AtomicU64,
    /// Set to make the subscribers return.
    pub stop: AtomicBool,
}

/// What a subscriber saw of its phase.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Latency of each message of the phase (send to arrival), in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// The latencies of the messages sent on schedule ([`ON_SCHEDULE`]), or all of them if not paced.
    pub on_schedule_ns: Vec<u64>,
    /// The longest a message of the phase was sent behind its schedule ([`Stamp::behind`]).
    pub max_behind: Duration,
    /// Messages of earlier phases (left over) that arrived.
    pub stale: u64,
    /// [`now_ns`] of the last message of the phase.
    pub last_ns: u64,
    /// Why the subscriber stopped before it was told to (the broker closed the connection, a read or a
    /// packet failed), if it did.
    pub ended_early: Option<String>,
}

/// Connects, subscribes to `filter` at QoS 1, and spawns a task that acknowledges and times what arrives until
/// `tally.stop` is set.
pub async fn subscribe(
    broker: &Broker,
    login: &Login,
    filter: &str,
    phase: u32,
    tally: Arc<Tally>,
) -> anyhow::Result<tokio::task::JoinHandle<Received>> {
    let mut connection = tokio::time::timeout(OPEN_TIMEOUT, open(broker, login))
        .await
        .map_err(|_| anyhow!("{} could not connect in time", login.client_id))??;
    let mut out = BytesMut::new();
    outpost_mqtt::encode(
        &Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(filter.to_owned(), QoS::AtLeastOnce)],
        }),
        &mut out,
    )?;
    connection.writer.write_all(&out).await?;
    let mut early = Vec::new();
    loop {
        match tokio::time::timeout(
            OPEN_TIMEOUT,
            read_packet(&mut connection.reader, &mut connection.buf),
        )
        .await
        .map_err(|_| anyhow!("no SUBACK for {}", login.client_id))??
        {
            Packet::SubAck(_) => break,
            Packet::Publish(p) => early.push(p),
            other => bail!("expected SUBACK, got {}", other.name()),
        }
    }
    Ok(tokio::spawn(receive(connection, phase, tally, early)))
}

async fn receive(
    mut connection: Connection,
    phase: u32,
    tally: Arc<Tally>,
    early: Vec<Publish>,
) -> Received {
    let mut received = Received::default();
    let mut acks = BytesMut::new();
    let mut pending: Vec<Publish> = early;
    loop {
        for publish in pending.drain(..) {
            let now = now_ns();
            match Stamp::read(&publish.payload) {
                Some(stamp) if stamp.phase == phase => {
                    let latency = now.saturating_sub(stamp.sent_ns);
                    received.latencies_ns.push(latency);
                    if stamp.behind() <= ON_SCHEDULE {
                        received.on_schedule_ns.push(latency);
                    }
                    received.max_behind = received.max_behind.max(stamp.behind());
                    received.last_ns = now;
                    tally.received.fetch_add(1, Ordering::Relaxed);
                }
                _ => received.stale += 1,
            }
            if publish.qos == QoS::AtLeastOnce {
                let _ =
                    outpost_mqtt::encode(&Packet::PubAck(PubAck { pkid: publish.pkid }), &mut acks);
            }
        }
        if !acks.is_empty() {
            if let Err(e) = connection.writer.write_all(&acks).await {
                received.ended_early = Some(format!("writing PUBACKs failed: {e}"));
                break;
            }
            acks.clear();
        }
        if tally.stop.load(Ordering::Relaxed) {
            break;
        }
        // Decode everything already buffered before reading again, so that acknowledgements go out batched.
        loop {
            match outpost_mqtt::decode(&mut connection.buf, MAX_PACKET) {
                Ok(Some(Packet::Publish(p))) => pending.push(p),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    received.ended_early = Some(format!("undecodable packet: {e}"));
                    return received;
                }
            }
        }
        if !pending.is_empty() {
            continue;
        }
        match tokio::time::timeout(
            Duration::from_millis(100),
            connection.reader.read_buf(&mut connection.buf),
        )
        .await
        {
            Ok(Ok(0)) => {
                received.ended_early = Some("the broker closed the connection".to_owned());
                break;
            }
            Ok(Err(e)) => {
                received.ended_early = Some(format!("reading failed: {e}"));
                break;
            }
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    let mut out = BytesMut::new();
    let _ = outpost_mqtt::encode(&Packet::Disconnect, &mut out);
    let _ = connection.writer.write_all(&out).await;
    let _ = connection.writer.shutdown().await;
    received
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_from_its_payload() {
        let stamp = Stamp {
            phase: 3,
            seq: 42,
            sent_ns: 123_456_789,
            due_ns: 123_000_000,
        };
        let payload = stamp.payload(100);
        assert_eq!(payload.len(), 100);
        assert_eq!(Stamp::read(&payload), Some(stamp));
    }

    #[test]
    fn a_payload_is_never_shorter_than_its_stamp() {
        let stamp = Stamp {
            phase: 1,
            seq: 1,
            sent_ns: 1,
            due_ns: 1,
        };
        assert_eq!(stamp.payload(4).len(), Stamp::LEN);
        assert_eq!(Stamp::read(b"short"), None);
    }

    #[test]
    fn a_paced_sender_is_due_the_messages_of_the_time_elapsed() {
        assert_eq!(due(Duration::from_millis(0), 1000.0), 0);
        assert_eq!(due(Duration::from_millis(1500), 1000.0), 1500);
        assert_eq!(due(Duration::from_micros(999), 1000.0), 0);
    }

    #[test]
    fn a_paced_message_falls_due_when_the_pacer_first_counts_it() {
        // At 1,000 a second from 5 s: the first message at 5.001 s, the 1,500th at 6.5 s.
        let start = 5_000_000_000;
        assert_eq!(due_at_ns(start, 0, 1000.0), 5_001_000_000);
        assert_eq!(due_at_ns(start, 1499, 1000.0), 6_500_000_000);
        let elapsed = |ns: u64| Duration::from_nanos(ns - start);
        for seq in [0, 7, 1499] {
            let at = due_at_ns(start, seq, 1000.0);
            assert_eq!(due(elapsed(at), 1000.0), seq + 1);
            assert_eq!(due(elapsed(at - 1), 1000.0), seq);
        }
    }

    #[test]
    fn a_stamp_is_behind_by_what_its_send_came_after_its_due_time() {
        let late = Stamp {
            phase: 1,
            seq: 9,
            sent_ns: 30_000_000,
            due_ns: 4_000_000,
        };
        assert_eq!(late.behind(), Duration::from_millis(26));
        assert!(late.behind() > ON_SCHEDULE);
        // Sent ahead of its time (an unpaced publisher's due time is its send time): not behind.
        let early = Stamp {
            due_ns: 31_000_000,
            ..late
        };
        assert_eq!(early.behind(), Duration::ZERO);
    }

    #[test]
    fn packet_identifiers_wrap_past_zero() {
        assert_eq!(next_pkid(0), 1);
        assert_eq!(next_pkid(7), 8);
        assert_eq!(next_pkid(u16::MAX), 1);
    }
}
