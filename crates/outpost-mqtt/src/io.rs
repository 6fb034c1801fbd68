//! The two I/O halves of a connection, server or client: a reader task that turns bytes into packets, and a
//! writer task that batches queued packets into as few writes as possible.

use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use crate::packet::{self, Packet, PacketError};

/// Bytes read per syscall at most while packets are flowing; the buffer grows only for a frame larger than this.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read at most by the read that waits between packets. It reads into the stack, so an idle connection
/// holds no read buffer at all; what arrives is then copied into one just the size of the data.
const IDLE_READ: usize = 4 * 1024;

/// A writer flushes once this many bytes are batched, even if more packets are queued.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket or TLS failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not an acceptable packet.
    #[error("malformed packet: {0}")]
    Packet(#[from] PacketError),
    /// The peer closed in the middle of a packet.
    #[error("connection closed in the middle of a packet")]
    Truncated,
}

/// Reads packets from `buf` and then `reader` until EOF or an error.
///
/// `Ok(None)` is a clean EOF between packets.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<Packet>, ReadError> {
    loop {
        if let Some(packet) = packet::decode(buf, max_size)? {
            return Ok(Some(packet));
        }
        let read = if buf.is_empty() {
            // Between packets: hold no buffer while waiting (no decoded packet shares it: the codec copies out
            // what a packet keeps).
            *buf = BytesMut::new();
            read_idle(reader, buf).await?
        } else {
            buf.reserve(READ_CHUNK);
            reader.read_buf(buf).await?
        };
        if read == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Truncated)
            };
        }
    }
}

/// One read into a stack buffer, its bytes then appended to `buf`: no heap memory is held while it waits.
/// Cancel-safe as `read_buf` is: bytes are either returned in `buf` or left in the reader.
async fn read_idle<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut stack = [0u8; IDLE_READ];
        let mut read = ReadBuf::new(&mut stack);
        std::task::ready!(Pin::new(&mut *reader).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
    .await
}

/// Reads packets and forwards them to the connection's loop until EOF, an error or the loop goes away.
///
/// Every packet already buffered is decoded before the next read, so one read serves a burst of packets.
/// The channel is bounded: when the loop falls behind, reading stops and TCP pushes back on the client.
pub async fn reader_task<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buf: BytesMut,
    max_size: usize,
    packets: mpsc::Sender<Result<Packet, ReadError>>,
) {
    loop {
        match read_packet(&mut reader, &mut buf, max_size).await {
            Ok(Some(packet)) => {
                if packets.send(Ok(packet)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = packets.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Writes queued packets until the queue closes (then flushes and shuts the stream down) or a write fails.
pub async fn writer_task<W: AsyncWrite + Unpin>(mut writer: W, mut queue: mpsc::Receiver<Packet>) {
    // Grows to a batch only while a burst lasts; an idle connection holds no write buffer.
    let mut buf = BytesMut::new();
    while let Some(packet) = queue.recv().await {
        encode_logged(&packet, &mut buf);
        // Take whatever else is queued, up to a batch, into the same write.
        while buf.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(packet) => encode_logged(&packet, &mut buf),
                Err(_) => break,
            }
        }
        if let Err(e) = write_all(&mut writer, &mut buf).await {
            tracing::debug!(error = %e, "write failed");
            return;
        }
        if queue.is_empty() && buf.capacity() > WRITE_BATCH {
            buf = BytesMut::new();
        }
    }
    let _ = writer.shutdown().await;
}

async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    writer.write_all(buf).await?;
    buf.clear();
    writer.flush().await
}

pub(crate) fn encode_logged(packet: &Packet, buf: &mut BytesMut) {
    // Only a publish built from backend data (a huge topic or body) can fail; it is skipped, not sent cut.
    if let Err(e) = packet::encode(packet, buf) {
        tracing::error!(error = %e, packet = packet.name(), "cannot encode packet; not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{PubAck, Publish, QoS};

    #[tokio::test]
    async fn the_writer_sends_every_queued_packet_in_order() {
        let (client, mut server) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        for pkid in 1..=3 {
            tx.try_send(Packet::PubAck(PubAck { pkid })).unwrap();
        }
        drop(tx);
        writer_task(client, rx).await;
        let mut bytes = Vec::new();
        server.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(bytes, [0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3]);
    }

    #[tokio::test]
    async fn the_reader_forwards_packets_then_ends_at_eof() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wire = BytesMut::new();
        packet::encode(
            &Packet::Publish(Publish::new("a", QoS::AtMostOnce, &b"x"[..])),
            &mut wire,
        )
        .unwrap();
        packet::encode(&Packet::PingReq, &mut wire).unwrap();
        client.write_all(&wire).await.unwrap();
        drop(client);
        let (tx, mut rx) = mpsc::channel(8);
        reader_task(server, BytesMut::new(), 1024, tx).await;
        assert!(matches!(rx.recv().await, Some(Ok(Packet::Publish(_)))));
        assert!(matches!(rx.recv().await, Some(Ok(Packet::PingReq))));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn eof_in_the_middle_of_a_packet_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0x30, 0x05, 0x00]).await.unwrap();
        drop(client);
        let result = read_packet(&mut server, &mut BytesMut::new(), 1024).await;
        assert!(matches!(result, Err(ReadError::Truncated)));
    }

    #[tokio::test]
    async fn an_oversize_packet_is_refused_before_its_body_arrives() {
        let (mut client, mut server) = tokio::io::duplex(64);
        // Announce 300 KB and send nothing more: the reader must not wait for it.
        client.write_all(&[0x30, 0x80, 0xC0, 0x12]).await.unwrap();
        let result = read_packet(&mut server, &mut BytesMut::new(), 256 * 1024).await;
        assert!(matches!(
            result,
            Err(ReadError::Packet(PacketError::PacketTooLarge { .. }))
        ));
    }

    #[tokio::test]
    async fn a_reader_waiting_between_packets_holds_no_buffer() {
        use futures_util::FutureExt as _;
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0xC0, 0x00]).await.unwrap();
        let mut buf = BytesMut::with_capacity(4096);
        let first = read_packet(&mut server, &mut buf, 1024).await;
        assert!(matches!(first, Ok(Some(Packet::PingReq))));
        let waiting = read_packet(&mut server, &mut buf, 1024).now_or_never();
        assert!(waiting.is_none(), "nothing more was sent");
        assert_eq!(buf.capacity(), 0);
    }
}
