//! Idle HTTPS connections to the hub's REST port: the TLS handshake, then nothing (or half a request header),
//! each held until the hub closes it or the attack ends. The harness reads, so it sees the hub's close at
//! once; it never sends another byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::system;

/// Time allowed for TCP and the TLS handshake of one connection.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

/// What an idle connection sends after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleKind {
    /// Nothing at all.
    Silent,
    /// A request line and two header lines, without the blank line that ends the headers.
    HalfHeader,
}

impl IdleKind {
    /// The bytes sent after the handshake.
    fn opening(self, host: &str) -> Vec<u8> {
        match self {
            Self::Silent => Vec::new(),
            Self::HalfHeader => format!(
                "GET /devices?api-version=2021-04-12 HTTP/1.1\r\nHost: {host}\r\nUser-Agent: outpost-bench\r\n"
            )
            .into_bytes(),
        }
    }
}

/// Where the idle connections go and how many.
pub struct IdleTarget<'a> {
    /// The hub's HTTPS address.
    pub addr: SocketAddr,
    /// The hub's host name (TLS server name).
    pub host: &'a str,
    /// Trusts the hub's CA.
    pub tls: Arc<rustls::ClientConfig>,
    /// The hub's process, whose memory is read once every connection is open.
    pub hub_pid: u32,
}

/// How the idle connections fared.
#[derive(Debug, Clone, Default)]
pub struct IdleOutcome {
    /// Connections whose TLS handshake completed.
    pub opened: usize,
    /// Connections that could not be opened.
    pub failed: usize,
    /// The first failure, in words.
    pub first_failure: Option<String>,
    /// Time from the first connection attempt to the last handshake.
    pub opening_took: Duration,
    /// The hub's RSS (KiB) when the last handshake completed.
    pub rss_all_open_kib: Option<u64>,
    /// Connections open at that moment (some may already have been closed by then).
    pub open_at_peak: usize,
    /// Connections the hub closed (EOF or an error on read).
    pub closed_by_hub: usize,
    /// Connections still open when the attack ended.
    pub open_at_end: usize,
    /// For each connection the hub closed: time from its handshake (and opening bytes) to the close.
    pub close_after: Vec<Duration>,
}

/// How one connection ended.
enum Ended {
    Failed(String),
    ClosedAfter(Duration),
    OpenAtEnd,
}

/// Opens `count` connections, `concurrency` handshakes at a time, and holds each until the hub closes it or
/// `duration` (from the first attempt) has passed; every connection is closed when this returns.
pub async fn run(
    target: &IdleTarget<'_>,
    kind: IdleKind,
    count: usize,
    concurrency: usize,
    duration: Duration,
) -> IdleOutcome {
    let started = Instant::now();
    let deadline = started + duration;
    let handshakes = Arc::new(Semaphore::new(concurrency.max(1)));
    let closed = Arc::new(AtomicUsize::new(0));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<bool>();
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let handshakes = Arc::clone(&handshakes);
        let closed = Arc::clone(&closed);
        let opened_tx = opened_tx.clone();
        let connector = TlsConnector::from(Arc::clone(&target.tls));
        let host = target.host.to_owned();
        let addr = target.addr;
        tasks.spawn(async move {
            let permit = handshakes.acquire_owned().await;
            let opened = tokio::time::timeout_at(
                deadline.min(Instant::now() + OPEN_TIMEOUT),
                open(&connector, addr, &host, kind),
            )
            .await;
            drop(permit);
            let mut stream = match opened {
                Err(_) => {
                    let _ = opened_tx.send(false);
                    return Ended::Failed("no TLS handshake in time".into());
                }
                Ok(Err(error)) => {
                    let _ = opened_tx.send(false);
                    return Ended::Failed(error.to_string());
                }
                Ok(Ok(stream)) => stream,
            };
            let _ = opened_tx.send(true);
            let since = Instant::now();
            let mut buf = [0_u8; 4096];
            loop {
                match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                    Err(_) => return Ended::OpenAtEnd,
                    // An answer (a 408, say) is read and ignored; the close is what counts.
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => {
                        closed.fetch_add(1, Ordering::SeqCst);
                        return Ended::ClosedAfter(since.elapsed());
                    }
                }
            }
        });
    }
    drop(opened_tx);

    let mut outcome = IdleOutcome::default();
    let mut attempts = 0;
    while let Some(opened) = opened_rx.recv().await {
        attempts += 1;
        if opened {
            outcome.opened += 1;
        }
        if attempts == count {
            outcome.opening_took = started.elapsed();
            outcome.rss_all_open_kib = system::rss_kib(target.hub_pid).ok();
            outcome.open_at_peak = outcome.opened - closed.load(Ordering::SeqCst);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ended::OpenAtEnd) => outcome.open_at_end += 1,
            Ok(Ended::ClosedAfter(after)) => {
                outcome.closed_by_hub += 1;
                outcome.close_after.push(after);
            }
            Ok(Ended::Failed(why)) => {
                outcome.failed += 1;
                outcome.first_failure.get_or_insert(why);
            }
            Err(panic) => {
                outcome.failed += 1;
                outcome
                    .first_failure
                    .get_or_insert_with(|| format!("a connection task failed: {panic}"));
            }
        }
    }
    outcome
}

/// TCP, the TLS handshake, and the opening bytes of `kind`.
async fn open(
    connector: &TlsConnector,
    addr: SocketAddr,
    host: &str,
    kind: IdleKind,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let mut stream = connector.connect(name, tcp).await?;
    let opening = kind.opening(host);
    if !opening.is_empty() {
        stream.write_all(&opening).await?;
        stream.flush().await?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_header_never_ends_the_headers() {
        let bytes = IdleKind::HalfHeader.opening("hub");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("GET /devices"));
        assert!(text.ends_with("\r\n"));
        assert!(!text.contains("\r\n\r\n"));
        assert!(IdleKind::Silent.opening("hub").is_empty());
    }
}
