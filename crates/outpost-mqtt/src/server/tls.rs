//! TLS for the MQTT listener on rustls's unbuffered API. [`accept`] does the server handshake; the
//! [`TlsStream`] it returns owns its buffers and gives each back as soon as it is empty, so an idle connection
//! holds rustls's connection state and nothing else. (tokio-rustls's stream wraps a buffered
//! `rustls::ServerConnection`, whose deframer keeps a 4 KiB read buffer for as long as the connection lives:
//! a third of what a held device connection cost.)
//!
//! Reads go through a stack buffer: only the incomplete record at the end of a read moves to the heap, and
//! only until the rest of it arrives. Writes encrypt one chunk at a time into a buffer given back once sent.
//!
//! A buffer a connection gives back goes to a small pool of its thread ([`spare`]) rather than to the allocator,
//! and the next connection of that thread to need one takes it from there: a busy connection does not allocate
//! and free a buffer per write and per read, and an idle one still holds none.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once, into a stack buffer.
const SOCKET_READ: usize = 8 * 1024;

/// Plaintext encrypted per write: one TLS record's worth, so the ciphertext waiting to be sent stays small.
const WRITE_CHUNK: usize = 16 * 1024;

/// Room for the header and tag of each record when encrypting (rustls says how much it needs if short).
const RECORD_OVERHEAD: usize = 64;

/// Buffers given back by the connections of one thread, for the next one of that thread that needs one.
mod spare {
    use super::{RefCell, WRITE_CHUNK};

    /// Buffers kept per thread at most.
    const KEPT: usize = 4;
    /// Larger buffers (from an unusually large read) go back to the allocator.
    const MAX_CAPACITY: usize = WRITE_CHUNK + 4 * 1024;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer, with the capacity of one given back if there is one.
    pub(super) fn take() -> Vec<u8> {
        SPARE
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Leaves `buf` empty and without an allocation, its memory kept for [`take`] if there is room.
    pub(super) fn give_back(buf: &mut Vec<u8>) {
        let mut buf = std::mem::take(buf);
        if buf.capacity() == 0 || buf.capacity() > MAX_CAPACITY {
            return;
        }
        buf.clear();
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < KEPT {
                spare.push(buf);
            }
        });
    }
}

/// A server-side TLS connection over `T`, read and written through `AsyncRead`/`AsyncWrite`.
pub struct TlsStream<T> {
    io: T,
    conn: UnbufferedServerConnection,
    buffers: Buffers,
    /// The socket reached end of stream.
    eof: bool,
    /// `close_notify` is queued (shutdown started).
    closing: bool,
    /// Reading failed (the peer sent what is not TLS, or a forged record): every later read fails too.
    failed: bool,
}

/// What a connection holds between calls; every buffer is empty, without an allocation, while idle.
#[derive(Default)]
struct Buffers {
    /// Ciphertext read but not yet processed: an incomplete record, or records of an incomplete handshake
    /// message that rustls holds in place.
    incoming: Vec<u8>,
    /// Decrypted bytes not yet read by the caller, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// Ciphertext not yet sent, from `outgoing_sent` on.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The peer sent `close_notify`: reads end once `plaintext` is read.
    peer_closed: bool,
}

/// Where processing the received records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// More bytes from the peer are needed (the handshake goes on, or a record is incomplete).
    Blocked,
    /// The handshake is complete and application data may be sent.
    Writable,
    /// Both sides sent `close_notify`.
    Closed,
}

/// Does the TLS handshake of a connection the server accepted (the caller bounds it with a timeout). Bytes the
/// client sent after its `Finished` stay in the stream to be read.
pub async fn accept<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<TlsStream<T>> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    let mut stream = TlsStream {
        io,
        conn,
        buffers: Buffers::default(),
        eof: false,
        closing: false,
        failed: false,
    };
    let mut step = stream.receive(&mut [])?;
    loop {
        std::future::poll_fn(|cx| stream.buffers.poll_send(&mut stream.io, cx)).await?;
        match step {
            Step::Writable => return Ok(stream),
            Step::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
            Step::Blocked => {}
        }
        // The read buffer lives on the stack of one poll, not in the future (which every held connection's
        // task cell would then be sized for).
        let received = std::future::poll_fn(|cx| {
            let mut bytes = [0u8; SOCKET_READ];
            let mut read = ReadBuf::new(&mut bytes);
            ready!(Pin::new(&mut stream.io).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream during the TLS handshake",
                )));
            }
            Poll::Ready(stream.receive(&mut bytes[..n]))
        })
        .await;
        step = match received {
            Ok(step) => step,
            Err(e) => {
                // The alert rustls queued tells the client why; sending it is best effort.
                let send = std::future::poll_fn(|cx| stream.buffers.poll_send(&mut stream.io, cx));
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
                return Err(e);
            }
        };
    }
}

impl<T> TlsStream<T> {
    /// The certificate chain the client presented at the handshake (leaf first), if it presented one.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Processes `bytes` just read from the socket after whatever incomplete record was buffered: decrypted
    /// data goes to `plaintext`, handshake messages and alerts rustls answers with go to `outgoing`. Holds on to
    /// the heap only what is left of an incomplete record.
    fn receive(&mut self, bytes: &mut [u8]) -> io::Result<Step> {
        let buffers = &mut self.buffers;
        let mut joined;
        let input: &mut [u8] = if buffers.incoming.is_empty() {
            bytes
        } else {
            joined = std::mem::take(&mut buffers.incoming);
            joined.extend_from_slice(bytes);
            &mut joined
        };
        let (used, step) = buffers.process(&mut self.conn, input, None);
        match step {
            Ok(step) => {
                if used < input.len() {
                    buffers.incoming = input[used..].to_vec();
                }
                Ok(step)
            }
            Err(e) => {
                buffers.queue_alert(&mut self.conn, &mut input[used..]);
                Err(invalid_data(e))
            }
        }
    }

    /// Encrypts `data` into `outgoing` (all of it; rustls splits it into records).
    fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        self.with_traffic(&mut |outgoing, traffic| {
            append(
                outgoing,
                data.len() + RECORD_OVERHEAD * (1 + data.len() / 4096),
                |out| {
                    traffic.encrypt(data, out).map_err(|e| match e {
                        EncryptError::InsufficientSize(size) => Ok(size.required_size),
                        EncryptError::EncryptExhausted => Err(io::Error::other(e)),
                    })
                },
            )
        })
    }

    /// Runs `write` at the connection's `WriteTraffic` state, with the buffer of outgoing ciphertext.
    fn with_traffic(&mut self, write: &mut TrafficWrite<'_>) -> io::Result<()> {
        let buffers = &mut self.buffers;
        let mut incoming = std::mem::take(&mut buffers.incoming);
        let (used, step) = buffers.process(&mut self.conn, &mut incoming, Some(write));
        // Complete records never wait in `incoming` (they are processed as they arrive), so nothing is used.
        incoming.drain(..used);
        buffers.incoming = incoming;
        match step.map_err(invalid_data)? {
            Step::Writable => Ok(()),
            Step::Closed => Err(io::ErrorKind::BrokenPipe.into()),
            Step::Blocked => Err(io::Error::other("TLS handshake not complete")),
        }
    }
}

/// Writes with the connection's `WriteTraffic` state (encrypt, `close_notify`) into the outgoing buffer.
type TrafficWrite<'a> = dyn FnMut(
        &mut Vec<u8>,
        &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
    ) -> io::Result<()>
    + 'a;

impl Buffers {
    /// Drives `conn` over `incoming` until it needs more bytes, can send application data or is closed;
    /// returns how many bytes of `incoming` it is done with (they must go before the next call) and where it
    /// stopped. `write`, if given, runs once at the `WriteTraffic` state.
    fn process(
        &mut self,
        conn: &mut UnbufferedServerConnection,
        incoming: &mut [u8],
        mut write: Option<&mut TrafficWrite<'_>>,
    ) -> (usize, Result<Step, rustls::Error>) {
        let mut used = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                conn.process_tls_records(&mut incoming[used..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => return (used + discard, Err(e)),
            };
            let mut stop = None;
            let mut failed = None;
            let mut extra_discard = 0;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                extra_discard += record.discard;
                                if self.plaintext.capacity() == 0 {
                                    self.plaintext = spare::take();
                                }
                                self.plaintext.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // Never offered (the server's `max_early_data_size` stays 0); read like any data if it were.
                    while let Some(Ok(record)) = early.next_record() {
                        self.plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let encoded = append(&mut self.outgoing, 512, |out| {
                        encode.encode(out).map_err(|e| match e {
                            EncodeError::InsufficientSize(size) => Ok(size.required_size),
                            EncodeError::AlreadyEncoded => Err(io::Error::other(e)),
                        })
                    });
                    if let Err(e) = encoded {
                        failed = Some(rustls::Error::General(e.to_string()));
                    }
                }
                // What was encoded goes out before anything encrypted later: `outgoing` keeps the order.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => stop = Some(Step::Closed),
                ConnectionState::BlockedHandshake => stop = Some(Step::Blocked),
                ConnectionState::WriteTraffic(mut traffic) => {
                    if let Some(write) = write.take() {
                        if let Err(e) = write(&mut self.outgoing, &mut traffic) {
                            failed = Some(rustls::Error::General(e.to_string()));
                        }
                    }
                    stop = Some(Step::Writable);
                }
                _ => failed = Some(rustls::Error::General("unexpected TLS state".into())),
            }
            used += discard + extra_discard;
            if let Some(e) = failed {
                return (used, Err(e));
            }
            match stop {
                // In TLS 1.3 the server may send before the client's `Finished`; the handshake is not done yet.
                Some(Step::Writable) if conn.is_handshaking() => return (used, Ok(Step::Blocked)),
                Some(step) => return (used, Ok(step)),
                None => {}
            }
        }
    }

    /// After an error, the fatal alert rustls queued (if any) goes to `outgoing`, to tell the peer why. One
    /// call only: rustls hands out a queued alert before looking at `incoming` again, and looking again at the
    /// records that failed would fail them a second time.
    fn queue_alert(&mut self, conn: &mut UnbufferedServerConnection, incoming: &mut [u8]) {
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) =
            conn.process_tls_records(incoming).state
        {
            let _ = append(&mut self.outgoing, 64, |out| {
                encode.encode(out).map_err(|e| match e {
                    EncodeError::InsufficientSize(size) => Ok(size.required_size),
                    EncodeError::AlreadyEncoded => Err(io::Error::other(e)),
                })
            });
        }
    }

    /// Sends `outgoing`, then gives its memory back.
    fn poll_send<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.outgoing_sent < self.outgoing.len() {
            let sent =
                ready!(Pin::new(&mut *io).poll_write(cx, &self.outgoing[self.outgoing_sent..]))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += sent;
        }
        if self.outgoing.capacity() > 0 {
            spare::give_back(&mut self.outgoing);
            self.outgoing_sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Copies decrypted bytes into `buf`; true if there were any.
    fn read_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let available = &self.plaintext[self.plaintext_read..];
        if available.is_empty() {
            return false;
        }
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.plaintext_read += n;
        if self.plaintext_read == self.plaintext.len() {
            spare::give_back(&mut self.plaintext);
            self.plaintext_read = 0;
        }
        true
    }
}

/// Appends what `write` puts into a slice to `out`, growing the slice once to the size `write` asks for
/// (`Err(Ok(required))`) if `guess` was short.
fn append(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Result<usize, io::Error>>,
) -> io::Result<()> {
    if out.capacity() == 0 {
        *out = spare::take();
    }
    let start = out.len();
    let mut size = guess;
    for _ in 0..2 {
        out.resize(start + size, 0);
        match write(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(Ok(required)) => size = required,
            Err(Err(e)) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    out.truncate(start);
    Err(io::Error::other("rustls asked for a larger buffer twice"))
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 || this.buffers.read_plaintext(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the TLS connection failed",
                )));
            }
            if this.buffers.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A TCP close without `close_notify`, as tokio-rustls reports it.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            // Whatever reading made rustls answer (a key update) goes out as the socket takes it; a write or
            // flush of the connection sends the rest.
            if let Poll::Ready(Err(e)) = this.buffers.poll_send(&mut this.io, cx) {
                return Poll::Ready(Err(e));
            }
            let mut bytes = [0u8; SOCKET_READ];
            let mut read = ReadBuf::new(&mut bytes);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                this.eof = true;
                continue;
            }
            if let Err(e) = this.receive(&mut bytes[..n]) {
                this.failed = true;
                let _ = this.buffers.poll_send(&mut this.io, cx);
                return Poll::Ready(Err(e));
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What the last write encrypted goes first: at most one chunk of ciphertext waits.
        ready!(this.buffers.poll_send(&mut this.io, cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(WRITE_CHUNK)];
        this.encrypt(data)?;
        // The bytes are taken; what the socket does not take now waits for the next write or flush.
        if let Poll::Ready(Err(e)) = this.buffers.poll_send(&mut this.io, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.buffers.poll_send(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            // A connection that failed or is closed already has no `close_notify` to send.
            let _ = this.with_traffic(&mut |outgoing, traffic| {
                append(outgoing, 64, |out| {
                    traffic.queue_close_notify(out).map_err(|e| match e {
                        EncryptError::InsufficientSize(size) => Ok(size.required_size),
                        EncryptError::EncryptExhausted => Err(io::Error::other(e)),
                    })
                })
            });
        }
        ready!(this.buffers.poll_send(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::version::{TLS12, TLS13};
    use rustls::SupportedProtocolVersion;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    type Client = tokio_rustls::client::TlsStream<DuplexStream>;

    #[test]
    fn a_buffer_given_back_is_used_again_by_the_next_taker_of_its_thread() {
        let mut buf = Vec::with_capacity(1000);
        buf.extend_from_slice(b"abc");
        spare::give_back(&mut buf);
        assert_eq!(buf.capacity(), 0, "the giver holds nothing");
        let again = spare::take();
        assert!(again.is_empty());
        assert!(again.capacity() >= 1000);
        assert_eq!(
            spare::take().capacity(),
            0,
            "one buffer was kept, and taken"
        );
        let mut large = Vec::with_capacity(1 << 20);
        spare::give_back(&mut large);
        assert_eq!(
            spare::take().capacity(),
            0,
            "a large buffer goes back to the allocator"
        );
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The server's configuration (TLS 1.2 and 1.3, as the hub's) and its self-signed certificate.
    fn server_config() -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&TLS12, &TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        (Arc::new(config), cert)
    }

    fn client_config(
        cert: &CertificateDer<'static>,
        version: &'static SupportedProtocolVersion,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A transport whose reads return at most `max` bytes, so that records arrive in pieces.
    struct Dribble<T> {
        io: T,
        max: usize,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Dribble<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let mut bytes = [0u8; 64];
            let max = self.max.min(buf.remaining()).min(bytes.len());
            let mut small = ReadBuf::new(&mut bytes[..max]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut small))?;
            buf.put_slice(small.filled());
            Poll::Ready(Ok(()))
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Dribble<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A tokio-rustls client and the server's stream over an in-memory pipe, the server reading at most
    /// `read_max` bytes at a time (a small one splits every record across reads).
    async fn connect(
        version: &'static SupportedProtocolVersion,
        read_max: usize,
    ) -> (Client, TlsStream<Dribble<DuplexStream>>) {
        let (config, cert) = server_config();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_io = Dribble {
            io: server_io,
            max: read_max,
        };
        let connector = tokio_rustls::TlsConnector::from(client_config(&cert, version));
        let name = ServerName::try_from("localhost").unwrap();
        let (client, server) = tokio::join!(
            connector.connect(name, client_io),
            accept(server_io, config)
        );
        (client.unwrap(), server.unwrap())
    }

    fn holds_no_buffer<T>(stream: &TlsStream<T>) -> bool {
        let b = &stream.buffers;
        b.incoming.capacity() == 0 && b.plaintext.capacity() == 0 && b.outgoing.capacity() == 0
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_client_of_either_tls_version_connects_and_data_goes_both_ways() {
        for version in [&TLS12, &TLS13] {
            let (mut client, mut server) = connect(version, 64 * 1024).await;
            assert_eq!(server.conn.protocol_version(), Some(version.version));
            client.write_all(b"CONNECT").await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 7];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"CONNECT");
            server.write_all(b"CONNACK").await.unwrap();
            server.flush().await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"CONNACK");
        }
    }

    #[tokio::test]
    async fn data_first_sent_with_the_clients_finished_is_read_after_the_handshake() {
        // The client's first write goes out with its Finished when the pipe is large: the server must keep
        // those bytes for the first read rather than lose them in the handshake.
        for version in [&TLS12, &TLS13] {
            let (config, cert) = server_config();
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let connector = tokio_rustls::TlsConnector::from(client_config(&cert, version));
            let name = ServerName::try_from("localhost").unwrap();
            let client = async {
                let mut client = connector.connect(name, client_io).await.unwrap();
                client.write_all(b"first").await.unwrap();
                client.flush().await.unwrap();
                client
            };
            let (_client, server) = tokio::join!(client, accept(server_io, config));
            let mut server = server.unwrap();
            let mut got = [0u8; 5];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"first");
        }
    }

    #[tokio::test]
    async fn records_split_across_reads_and_writes_larger_than_a_record_arrive_whole() {
        for version in [&TLS12, &TLS13] {
            // Every read of either side returns at most 7 bytes: the handshake and each record come in pieces.
            let (mut client, mut server) = connect(version, 7).await;
            let sent = pattern(100 * 1024);
            let mut got = vec![0u8; sent.len()];
            let (written, read) = tokio::join!(
                async {
                    client.write_all(&sent).await?;
                    client.flush().await
                },
                server.read_exact(&mut got)
            );
            written.unwrap();
            read.unwrap();
            assert!(got == sent, "client to server");
            assert!(holds_no_buffer(&server));

            let mut got = vec![0u8; sent.len()];
            let (written, read) = tokio::join!(
                async {
                    server.write_all(&sent).await?;
                    server.flush().await
                },
                client.read_exact(&mut got)
            );
            written.unwrap();
            read.unwrap();
            assert!(got == sent, "server to client");
            assert!(holds_no_buffer(&server));
        }
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer_and_an_incomplete_record_only_until_it_completes() {
        let (mut client, mut server) = connect(&TLS13, 64 * 1024).await;
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert!(holds_no_buffer(&server));
        eprintln!(
            "TlsStream<TcpStream> is {} bytes",
            std::mem::size_of::<TlsStream<tokio::net::TcpStream>>()
        );

        // Half a record: the server keeps it, waiting for the rest.
        let (mut io, mut conn) = client.into_inner();
        std::io::Write::write_all(&mut conn.writer(), b"hello").unwrap();
        let mut record = Vec::new();
        conn.write_tls(&mut record).unwrap();
        let half = record.len() / 2;
        io.write_all(&record[..half]).await.unwrap();
        let mut got = [0u8; 5];
        let waited = tokio::time::timeout(Duration::from_millis(50), server.read(&mut got)).await;
        assert!(
            waited.is_err(),
            "a read returned before the record was complete"
        );
        assert_eq!(server.buffers.incoming.len(), half);
        io.write_all(&record[half..]).await.unwrap();
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert!(holds_no_buffer(&server));
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_cleanly_both_ways() {
        for version in [&TLS12, &TLS13] {
            let (mut client, mut server) = connect(version, 64 * 1024).await;
            client.write_all(b"last").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"last");
            // The server may still answer, then closes with its own close_notify.
            server.write_all(b"bye").await.unwrap();
            server.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
        }
    }

    #[tokio::test]
    async fn a_close_without_close_notify_is_an_unexpected_end_of_stream() {
        let (client, mut server) = connect(&TLS13, 64 * 1024).await;
        drop(client.into_inner());
        let error = server.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_peer_that_is_not_speaking_tls_fails_the_handshake_with_an_error() {
        let (config, _) = server_config();
        // What the peer sends, and whether the server answers with a fatal alert (not to the peer's own alert).
        let cases: [(&[u8], bool); 4] = [
            (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", true),
            // An MQTT CONNECT sent in the clear.
            (
                &[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0],
                true,
            ),
            // A handshake record claiming 18 KiB, more than a record may hold.
            (&[22, 3, 1, 0x48, 0, 1, 0, 0, 0], true),
            // A fatal alert in place of a ClientHello.
            (&[21, 3, 3, 0, 2, 2, 40], false),
        ];
        for (garbage, alert) in cases {
            let (mut client_io, server_io) = tokio::io::duplex(64 * 1024);
            client_io.write_all(garbage).await.unwrap();
            let error = accept(server_io, Arc::clone(&config))
                .await
                .err()
                .unwrap_or_else(|| panic!("{garbage:?} was accepted"));
            assert_ne!(error.kind(), io::ErrorKind::UnexpectedEof, "{garbage:?}");
            // The server says why with a fatal alert record (type 21, level 2) before closing.
            let mut answer = Vec::new();
            client_io.read_to_end(&mut answer).await.unwrap();
            if alert {
                assert!(
                    answer.len() == 7 && (answer[0], answer[5]) == (21, 2),
                    "{garbage:?}: {answer:?}"
                );
            } else {
                assert!(answer.is_empty(), "{garbage:?}: {answer:?}");
            }
        }
        // A ClientHello cut short by the end of the stream.
        let (mut client_io, server_io) = tokio::io::duplex(64 * 1024);
        client_io
            .write_all(&[22, 3, 1, 0, 200, 1, 0])
            .await
            .unwrap();
        drop(client_io);
        let error = accept(server_io, config).await.err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_forged_record_after_the_handshake_is_a_read_error() {
        for version in [&TLS12, &TLS13] {
            let (client, mut server) = connect(version, 64 * 1024).await;
            let (mut io, _) = client.into_inner();
            let mut forged = vec![23, 3, 3, 0, 40];
            forged.extend(pattern(40));
            io.write_all(&forged).await.unwrap();
            let error = server.read(&mut [0u8; 16]).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            // Once failed, the stream keeps failing rather than panicking or reading on.
            assert!(server.read(&mut [0u8; 16]).await.is_err());
        }
    }

    #[tokio::test]
    async fn data_keeps_flowing_after_the_client_updates_its_keys() {
        let (mut client, mut server) = connect(&TLS13, 64 * 1024).await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after");
        server.write_all(b"reply").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");
    }
}
