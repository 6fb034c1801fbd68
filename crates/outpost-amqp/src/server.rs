//! The tokio/TLS driver: accept loop, connection cap, TLS, SASL, then one task per connection, per session
//! and per link.
//!
//! TLS comes first and alone (Event Hubs and IoT Hub speak plain TLS on 5671, without AMQP's TLS protocol
//! header); inside it fe2o3-amqp negotiates the SASL header (`AMQP 3 1 0 0`), the mechanism, then the AMQP
//! header and Open. From there a connection task accepts sessions, a session task accepts attaches and hands
//! each to `links`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, ListenerSessionHandle, SaslAcceptor, SessionAcceptor,
};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::backend::{AuthError, Grant, ServiceBackend};
use crate::claims::Claims;
use crate::links;
use crate::pad::PaddedStream;

/// IoT Hub's and Event Hubs' largest message: 256 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 256 * 1024;
/// Largest frame either side may send (fe2o3-amqp splits larger transfers).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Sessions one connection may begin.
const MAX_SESSIONS: u16 = 64;
/// The largest link handle a client may use on a session (links are capped lower, at
/// [`links::MAX_LINKS_PER_SESSION`]; handles may be sparse).
const HANDLE_MAX: u32 = 1023;
/// Time for TLS, SASL and Open together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that sends nothing for this long is closed (Event Hubs' value; clients send empty frames
/// at half of it).
const IDLE_TIMEOUT_MS: u32 = 240_000;
/// Time to close politely on shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the AMQP head is set up.
#[derive(Clone)]
pub struct AmqpConfig {
    /// TLS, shared with the other listeners (its certificate resolver follows renewals).
    pub tls: Arc<rustls::ServerConfig>,
    /// Connections served at once; past this, new ones are closed right after TCP accept.
    pub max_connections: usize,
    /// The largest frame, offered in Open.
    pub max_frame_size: u32,
    /// The largest C2D message (body and properties) accepted; larger ones are rejected.
    pub max_message_size: u64,
    /// The name clients dial (the container id, and the host of `$management`'s token audience).
    pub host_name: String,
}

impl AmqpConfig {
    /// The defaults around a TLS configuration.
    pub fn new(tls: Arc<rustls::ServerConfig>, host_name: impl Into<String>) -> Self {
        Self {
            tls,
            max_connections: 10_000,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            host_name: host_name.into(),
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("max_connections", &self.max_connections)
            .field("max_frame_size", &self.max_frame_size)
            .field("max_message_size", &self.max_message_size)
            .field("host_name", &self.host_name)
            .finish_non_exhaustive()
    }
}

pub use outpost_https::handoff::{
    handoff, HandedStreams, HandoffRefused, StreamHandoff, Transport,
};

/// Accept loop: TLS, then [`serve_connection`] for each connection, under the connection cap. Returns when
/// `shutdown` fires, after closing every connection (at most a few seconds).
///
/// Accept errors (out of file descriptors...) are logged and retried, so the result is `Ok` in practice.
pub async fn serve<B: ServiceBackend>(
    listener: TcpListener,
    config: AmqpConfig,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // No sender: the server takes its own listener's connections only.
    let (_, handed) = handoff();
    serve_with_handoff(listener, config, backend, handed, shutdown).await
}

/// [`serve`], and also the streams handed over through `handed` (their TLS and `peer` are the other
/// listener's business; from the SASL header on they are served alike, under the same connection cap).
pub async fn serve_with_handoff<B: ServiceBackend>(
    listener: TcpListener,
    config: AmqpConfig,
    backend: Arc<B>,
    handed: HandedStreams,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut handed = handed;
    let mut handing = true;
    let acceptor = TlsAcceptor::from(Arc::clone(&config.tls));
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let config = Arc::new(config);
    // Connections watch this to close on shutdown; a broadcast by value change, never lagging.
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Frames are written whole; waiting for more to coalesce only adds latency.
                    let _ = tcp.set_nodelay(true);
                    Incoming::Tcp(tcp, peer)
                }
                Err(error) => {
                    tracing::warn!(%error, "AMQP accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            established = handed.recv(), if handing => {
                let Some(outpost_https::handoff::Established { stream, peer, .. }) = established else {
                    // Every sender is gone: only the listener is left.
                    handing = false;
                    continue;
                };
                Incoming::Handed(stream, peer)
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        backoff = Duration::from_millis(10);
        let peer = incoming.peer();
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_connections, "AMQP connection cap reached; closing the new connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let config = Arc::clone(&config);
        let backend = Arc::clone(&backend);
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            match incoming {
                Incoming::Handed(stream, _) => {
                    serve_connection(stream, &config, backend, stop).await;
                }
                Incoming::Tcp(tcp, _) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, &config, backend, stop).await,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "AMQP TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "AMQP TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    tracing::info!(connections = connections.len(), "AMQP server shutting down");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!("AMQP connections still closing after 10 s; aborting them");
    }
    Ok(())
}

/// A connection to serve: from the listener (TLS to do) or handed over (ready).
enum Incoming {
    Tcp(TcpStream, SocketAddr),
    Handed(Box<dyn Transport>, SocketAddr),
}

impl Incoming {
    fn peer(&self) -> SocketAddr {
        match self {
            Incoming::Tcp(_, peer) | Incoming::Handed(_, peer) => *peer,
        }
    }
}

/// Serves one established stream (TLS already done, or a WebSocket carrying AMQP): SASL, Open, then its
/// sessions and links until the client closes or `shutdown` fires. The caller counts it against its own cap.
pub async fn serve_connection<B, S>(
    stream: S,
    config: &AmqpConfig,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send,
) where
    B: ServiceBackend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sasl = Sasl::new(Arc::clone(&backend));
    let acceptor = ConnectionAcceptor::builder()
        .container_id(config.host_name.clone())
        .max_frame_size(config.max_frame_size)
        .channel_max(MAX_SESSIONS)
        .idle_time_out(IDLE_TIMEOUT_MS)
        .sasl_acceptor(sasl.clone())
        .build();
    let opened = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        acceptor.accept(PaddedStream::new(stream)),
    )
    .await;
    let mut handle = match opened {
        Ok(Ok(handle)) => handle,
        Ok(Err(error)) => {
            tracing::debug!(%error, "AMQP connection refused during SASL or Open");
            return;
        }
        Err(_) => {
            tracing::debug!("AMQP SASL or Open timed out");
            return;
        }
    };
    let claims = Claims::new(sasl.granted());
    let connection = Arc::new(links::Connection::new(
        backend,
        config.host_name.clone(),
        config.max_message_size,
        claims,
    ));
    // An explicit handle-max: the Python client compares with it, and fe2o3-amqp leaves the default out.
    let session_acceptor = SessionAcceptor::builder().handle_max(HANDLE_MAX).build();
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = handle.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                match session_acceptor.accept_incoming_session(incoming, &mut handle).await {
                    Ok(session) => {
                        sessions.spawn(run_session(session, Arc::clone(&connection)));
                    }
                    Err(error) => tracing::debug!(%error, "AMQP begin failed"),
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    sessions.shutdown().await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handle.close()).await;
}

/// One session: accepts its links until it ends; its links end with it.
async fn run_session<B: ServiceBackend>(
    mut session: ListenerSessionHandle,
    connection: Arc<links::Connection<B>>,
) {
    let mut links = JoinSet::new();
    loop {
        tokio::select! {
            attach = session.next_incoming_attach() => {
                let Some(attach) = attach else { break };
                links::attach(attach, &mut session, &connection, &mut links).await;
            }
            Some(_) = links.join_next(), if !links.is_empty() => {}
        }
    }
    links.shutdown().await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.end()).await;
}

type PlainCheck = dyn Fn(&str, &str) -> Result<Grant, AuthError> + Send + Sync;

/// SASL for one connection: ANONYMOUS (the client then puts tokens on `$cbs`) or PLAIN checked by the
/// backend; the grant PLAIN earned is kept for the connection's claims.
#[derive(Clone)]
struct Sasl {
    check: Arc<PlainCheck>,
    granted: Arc<Mutex<Option<Grant>>>,
}

impl Sasl {
    fn new<B: ServiceBackend>(backend: Arc<B>) -> Self {
        Self {
            check: Arc::new(move |user, password| backend.authorize_plain(user, password)),
            granted: Arc::new(Mutex::new(None)),
        }
    }

    fn granted(&self) -> Option<Grant> {
        self.granted.lock().expect("SASL lock poisoned").take()
    }

    fn outcome(code: SaslCode) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }

    /// `authzid NUL authcid NUL password`.
    fn plain(&self, response: &[u8]) -> SaslCode {
        let mut parts = response.split(|b| *b == 0);
        let (Some(_), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return SaslCode::Auth;
        };
        let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password))
        else {
            return SaslCode::Auth;
        };
        match (self.check)(user, password) {
            Ok(grant) => {
                *self.granted.lock().expect("SASL lock poisoned") = Some(grant);
                SaslCode::Ok
            }
            Err(error) => {
                tracing::debug!(%user, %error, "SASL PLAIN refused");
                SaslCode::Auth
            }
        }
    }
}

impl fmt::Debug for Sasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sasl")
    }
}

impl SaslAcceptor for Sasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from("MSSBCBS"),
            Symbol::from("PLAIN"),
            Symbol::from("ANONYMOUS"),
        ])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let code = match init.mechanism.as_str() {
            // MSSBCBS: Service Bus's "authenticate on $cbs" mechanism, which is ANONYMOUS by another name.
            "ANONYMOUS" | "MSSBCBS" => SaslCode::Ok,
            "PLAIN" => init
                .initial_response
                .as_ref()
                .map_or(SaslCode::Auth, |response| self.plain(response)),
            _ => SaslCode::Auth,
        };
        Self::outcome(code)
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // No mechanism offered here sends a challenge, so a response is a protocol error.
        Self::outcome(SaslCode::Sys)
    }
}
