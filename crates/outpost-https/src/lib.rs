//! The HTTPS listener that the hub's REST API and the edge hub's method API share: TLS, then HTTP/1.1 or
//! HTTP/2 (chosen by the client's first bytes), under the limits every Outpost HTTPS port keeps.
//!
//! - **Connection cap.** A semaphore of [`HttpsLimits::max_connections`] permits; past it, accepting waits
//!   (new clients queue in the kernel's backlog, and the ones already served are not starved of descriptors).
//! - **TLS handshake and request headers** each get [`HttpsLimits::handshake_timeout`] and
//!   [`HttpsLimits::header_read_timeout`]: a client that opens a connection and sends half a header is closed.
//! - **Idle connections** are closed gracefully after [`HttpsLimits::idle_timeout`] without a request in
//!   flight (see [`serve`] for why this is Outpost's own timer and not hyper's).
//!
//! What a request may carry (body limits, authorisation before the body is read) belongs to each router.
//!
//! Requests carry the client's address as axum's `ConnectInfo<SocketAddr>` and, when the TLS configuration asked for
//! one and the client presented it, its certificate chain as a [`ClientCertificateChain`] extension (whose
//! identity it proves is the router's to decide). HTTP/1.1 connections may be
//! upgraded (a router's WebSocket route): the upgraded stream leaves this listener's cap and timers, and is the
//! route's to bound ([`websocket::WebSocketBytes`] reads a WebSocket as bytes).

pub mod handoff;
pub mod metrics;
pub mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// The certificate chain (leaf first) a client presented at the TLS handshake, carried in the extensions of each
/// of its connection's requests. The handshake proved only that the client holds the leaf's key (the acceptor's
/// client-certificate verifier, e.g. `outpost_pki::client_auth::AnyClientCertificate`, decides what else); which
/// identity the chain authenticates is the router's check.
#[derive(Debug, Clone)]
pub struct ClientCertificateChain(pub Arc<[CertificateDer<'static>]>);

/// The limits of one HTTPS listener.
#[derive(Debug, Clone)]
pub struct HttpsLimits {
    /// Connections served at once; past this, accepting waits.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to send a request's headers, from when the server waits for them.
    pub header_read_timeout: Duration,
    /// A connection without a request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for HttpsLimits {
    /// The hub's: 10,000 connections, 10 s handshake, 10 s headers, 60 s idle.
    fn default() -> Self {
        Self::with_max_connections(10_000)
    }
}

impl HttpsLimits {
    /// The defaults (10 s handshake, 10 s headers, 60 s idle) with a cap of `max_connections`.
    pub fn with_max_connections(max_connections: usize) -> Self {
        Self {
            max_connections,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// How long connections get to finish their requests once the listener is told to stop.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then closes every connection gracefully
/// (in-flight requests get [`DRAIN`] to finish).
///
/// Idle connections: hyper's HTTP/1 server starts its header timer as soon as it waits for the next request,
/// so an idle HTTP/1.1 keep-alive connection is already closed after `header_read_timeout`. Its HTTP/2 server
/// has no idle timeout at all: `keep_alive_interval`/`keep_alive_timeout` send pings, which find dead peers but
/// keep a live, silent one open forever, and `max_concurrent_streams` bounds streams, not time. So each
/// connection counts its requests in flight and is shut down gracefully (GOAWAY for HTTP/2) once it has had
/// none for `idle_timeout`. That covers both protocols and also a client stuck before its first request
/// (hyper-util's protocol sniffing has no timer of its own). A request in flight (the edge's 60 s long poll, a
/// 300 s method call) keeps its connection, so pings are not needed to protect it.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    limits: HttpsLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Connections watch this to close on shutdown; a value, so a late watcher never misses it.
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: wait for connections to close rather than spin.
                    tracing::warn!(%error, "HTTPS accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(10);
        connections.spawn(connection(
            Accepted {
                stream,
                peer,
                permit,
            },
            acceptor.clone(),
            router.clone(),
            limits.clone(),
            stopping.clone(),
        ));
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "HTTPS connections still open after the drain; aborting them"
        );
    }
}

/// An accepted TCP connection and the permit it holds until it closes.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

/// Counts one request in flight while it lives.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// How long the connection has been without a request in flight, or `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        // A std Mutex: held for one read or write of an Instant, never across an await.
        Some(
            self.last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .elapsed(),
        )
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    accepted: Accepted,
    acceptor: TlsAcceptor,
    router: axum::Router,
    limits: HttpsLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let Accepted {
        stream,
        peer,
        permit,
    } = accepted;
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .filter(|chain| !chain.is_empty())
        .map(|chain| ClientCertificateChain(chain.into()));
    let activity = Activity::new();
    let counted = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        if let Some(chain) = &chain {
            request.extensions_mut().insert(chain.clone());
        }
        let in_flight = counted.begin();
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await;
            drop(in_flight);
            response
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let served = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(served);
    let mut closing = false;
    loop {
        let wait = activity.idle_for().map_or(limits.idle_timeout, |idle| {
            limits.idle_timeout.saturating_sub(idle)
        });
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "HTTPS connection ended with an error");
                }
                break;
            }
            () = tokio::time::sleep(wait), if !closing => {
                if activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) {
                    tracing::debug!(%peer, "closing an idle HTTPS connection");
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = stopping.changed(), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
    drop(permit);
}
