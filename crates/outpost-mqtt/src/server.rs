//! The tokio/TLS driver of the device protocol: [`serve`] accepts connections and runs one session each.
//!
//! Per connection, one task: it reads and decodes packets, owns the [`Session`](crate::session::Session), runs
//! backend operations and writes replies in batches. Whatever one client sends, only its own connection closes.
//!
//! Besides its own TLS listener, a server takes connections whose transport another listener set up (MQTT
//! over WebSocket, upgraded by the HTTPS listener): [`handoff`] makes the pair, [`serve_with_handoff`] serves
//! both kinds under one connection cap, one shutdown and one registry of client ids.

mod connection;
mod handshake;
mod registry;
pub(crate) mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use connection::ConnectionError;
pub use handshake::username_names_client;

use crate::ops::DeviceOperations;
use crate::session::Limits;
use registry::Registry;

/// IoT Hub's message limit (256 KiB) plus room for the topic and its property bag.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024 + 16 * 1024;

/// How the server runs.
#[derive(Clone)]
pub struct ServerConfig {
    /// TLS (the Python SDK needs TLS 1.2 offered; the certificate must name the host clients dial).
    pub tls: Arc<rustls::ServerConfig>,
    /// Largest packet accepted; a larger one closes its connection (256 KiB + headroom by default).
    pub max_packet_size: usize,
    /// Time allowed for the TLS handshake, and then for the CONNECT.
    pub connect_timeout: Duration,
    /// What one session may hold for its client: QoS 1 publishes in flight and queued behind them.
    pub session: Limits,
    /// Packets waiting to be written to one client. A client that stops reading fills its socket buffer
    /// and then this queue, and is disconnected.
    pub max_queued_packets: usize,
    /// How long the persistent session of a client that went away is kept in memory (its unacknowledged
    /// publishes); the subscriptions the backend persisted outlive it.
    pub session_expiry: Duration,
    /// Connections served at once; past this, accepting waits.
    pub max_connections: usize,
}

impl ServerConfig {
    /// The defaults around a TLS configuration.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tls,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            connect_timeout: Duration::from_secs(30),
            session: Limits::default(),
            max_queued_packets: 512,
            session_expiry: Duration::from_hours(7 * 24),
            max_connections: 50_000,
        }
    }
}

pub use outpost_https::handoff::{
    handoff, HandedStreams, HandoffRefused, StreamHandoff, Transport,
};

/// How often parked sessions are checked for expiry.
const SESSION_SWEEP: Duration = Duration::from_mins(1);

/// What every connection of one server shares.
struct Shared<O> {
    ops: Arc<O>,
    config: ServerConfig,
    registry: Registry,
}

/// Accept loop: TLS handshake, CONNECT, then the session until disconnect. A second connection of the same client id
/// closes the first. Returns when `shutdown` fires.
///
/// On shutdown every connection closes (the backend sees `disconnected`) within a few seconds. Accept
/// errors (out of file descriptors...) are logged and retried, so the result is `Ok` in practice.
pub async fn serve<O: DeviceOperations>(
    listener: TcpListener,
    config: ServerConfig,
    ops: Arc<O>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // No sender: the server takes its own listener's connections only.
    let (_, handed) = handoff();
    serve_with_handoff(listener, config, ops, handed, shutdown).await
}

/// [`serve`], and also the streams handed over through `handed` (their TLS and `peer` are the other listener's
/// business; from CONNECT on they are served alike, under the same connection cap).
pub async fn serve_with_handoff<O: DeviceOperations>(
    listener: TcpListener,
    config: ServerConfig,
    ops: Arc<O>,
    handed: HandedStreams,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut handed = handed;
    let mut handing = true;
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let shared = Arc::new(Shared {
        ops,
        config,
        registry: Registry::default(),
    });
    // Connections watch this to close on shutdown; a broadcast by value change, never lagging.
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    let mut sweep = tokio::time::interval(SESSION_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            _ = sweep.tick() => {
                let expired = shared.registry.expire(std::time::Instant::now(), shared.config.session_expiry);
                if expired > 0 {
                    tracing::info!(expired, "persistent sessions of clients away too long expired");
                }
                continue;
            }
            permit = Arc::clone(&limit).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            established = handed.recv(), if handing => {
                let Some(outpost_https::handoff::Established { stream, peer, client_chain }) = established else {
                    // Every sender is gone: only the listener is left.
                    handing = false;
                    continue;
                };
                let shared = Arc::clone(&shared);
                let stopped = stopped.clone();
                connections.spawn(async move {
                    let client_chain = client_chain.map(|chain| Box::from(&chain.0[..]));
                    connection::run_established(shared, stream, peer, client_chain, stopped).await;
                    drop(permit);
                });
                while connections.try_join_next().is_some() {}
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let shared = Arc::clone(&shared);
        let stopped = stopped.clone();
        connections.spawn(async move {
            connection::run(shared, tcp, peer, stopped).await;
            drop(permit);
        });
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
    }

    tracing::info!(connections = connections.len(), "MQTT server shutting down");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!("connections still closing after 10 s; aborting them");
    }
    Ok(())
}
