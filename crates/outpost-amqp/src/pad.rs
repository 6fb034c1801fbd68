//! Outgoing performatives with every field: a write-side shim between fe2o3-amqp and the socket.
//!
//! AMQP lets an encoder drop a composite's trailing null fields (§1.4), and fe2o3-amqp does. `azure-eventhub`'s
//! pure-Python client reads performatives by position (`frame[6]` of a flow, `frame[2]` of a detach, the
//! payload of a transfer at index 11) and fails on a shortened list, because the services it talks to always
//! send them whole. This writer re-frames what fe2o3-amqp writes: protocol headers and SASL frames pass as
//! they are; an AMQP frame whose performative list is shorter than the performative's field count gets
//! nulls appended (and a list0 becomes a list). It reads only what this process wrote, never client input.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes waiting for the socket before a write waits for it.
const HIGH_WATER: usize = 256 * 1024;

/// The number of fields of the performative with descriptor `code` (AMQP 1.0 §2.7).
fn field_count(code: u64) -> Option<u32> {
    // open, begin, attach, flow, transfer, disposition, detach, end, close
    const COUNTS: [u32; 9] = [10, 8, 14, 11, 11, 6, 3, 1, 1];
    let index = usize::try_from(code.checked_sub(0x10)?).ok()?;
    COUNTS.get(index).copied()
}

/// Splits the written byte stream into headers and frames and pads performatives.
#[derive(Debug, Default)]
struct Padder {
    pending: Vec<u8>,
    /// Something that was not a frame went by: pass everything through from here on.
    raw: bool,
}

impl Padder {
    /// Takes written bytes; appends the padded whole frames (and headers) to `out`.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.raw {
            out.extend_from_slice(bytes);
            return;
        }
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while self.pending.len() - at >= 8 {
            let rest = &self.pending[at..];
            if rest.starts_with(b"AMQP") {
                out.extend_from_slice(&rest[..8]);
                at += 8;
                continue;
            }
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if size < 8 {
                self.raw = true;
                out.extend_from_slice(rest);
                at = self.pending.len();
                break;
            }
            if rest.len() < size {
                break;
            }
            pad_frame(&rest[..size], out);
            at += size;
        }
        self.pending.drain(..at);
    }
}

/// Appends `frame` to `out`, its performative padded to its full field count when it is an AMQP frame.
fn pad_frame(frame: &[u8], out: &mut Vec<u8>) {
    match padded(frame) {
        Some(padded) => out.extend_from_slice(&padded),
        None => out.extend_from_slice(frame),
    }
}

/// The padded frame, or `None` when it is already whole or not a performative this knows.
fn padded(frame: &[u8]) -> Option<Vec<u8>> {
    let doff = usize::from(*frame.get(4)?) * 4;
    if frame.get(5) != Some(&0) || doff < 8 || frame.len() <= doff {
        return None;
    }
    let body = &frame[doff..];
    // described (0x00), then the descriptor: smallulong 0x53 or ulong 0x80.
    if body.first() != Some(&0x00) {
        return None;
    }
    let (code, list_at) = match body.get(1)? {
        0x53 => (u64::from(*body.get(2)?), 3),
        0x80 => (u64::from_be_bytes(body.get(2..10)?.try_into().ok()?), 10),
        _ => return None,
    };
    let expected = field_count(code)?;
    let list = &body[list_at..];
    let (count, items, after_list) = match *list.first()? {
        0x45 => (0u32, &list[1..1], 1),
        0xc0 => {
            let size = usize::from(*list.get(1)?);
            let items = list.get(3..2 + size)?;
            (u32::from(*list.get(2)?), items, 2 + size)
        }
        0xd0 => {
            let size = u32::from_be_bytes(list.get(1..5)?.try_into().ok()?) as usize;
            let count = u32::from_be_bytes(list.get(5..9)?.try_into().ok()?);
            let items = list.get(9..5 + size)?;
            (count, items, 5 + size)
        }
        _ => return None,
    };
    if count >= expected {
        return None;
    }
    let missing = (expected - count) as usize;
    let payload = &list[after_list..];
    let mut items = items.to_vec();
    items.resize(items.len() + missing, 0x40);
    let mut body = body[..list_at].to_vec();
    if items.len() < 255 {
        body.push(0xc0);
        body.push((items.len() + 1) as u8);
        body.push(expected as u8);
    } else {
        body.push(0xd0);
        body.extend_from_slice(&((items.len() + 4) as u32).to_be_bytes());
        body.extend_from_slice(&expected.to_be_bytes());
    }
    body.extend_from_slice(&items);
    body.extend_from_slice(payload);
    let size = doff + body.len();
    let mut frame_out = Vec::with_capacity(size);
    frame_out.extend_from_slice(&(size as u32).to_be_bytes());
    frame_out.extend_from_slice(&frame[4..doff]);
    frame_out.extend_from_slice(&body);
    Some(frame_out)
}

/// A stream whose writes go through the padder; reads pass through. (It also gives fe2o3-amqp the `Debug`
/// it asks of a stream, which WebSocket streams need not have.)
pub(crate) struct PaddedStream<S> {
    inner: S,
    padder: Padder,
    out: Vec<u8>,
}

impl<S> PaddedStream<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            padder: Padder::default(),
            out: Vec::new(),
        }
    }
}

impl<S> std::fmt::Debug for PaddedStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PaddedStream")
    }
}

impl<S: AsyncWrite + Unpin> PaddedStream<S> {
    /// Writes `out` to the socket until it is empty or the socket would block.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PaddedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PaddedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        this.padder.push(buf, &mut this.out);
        // Start writing now; what the socket does not take yet goes on the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_drain(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AMQP frame on channel 0 around `body`.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&[2, 0, 0, 0]);
        out.extend_from_slice(body);
        out
    }

    fn pad(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Padder::default().push(bytes, &mut out);
        out
    }

    #[test]
    fn a_close_without_fields_gets_its_null_error() {
        let close = frame(&[0x00, 0x53, 0x18, 0x45]);
        assert_eq!(pad(&close), frame(&[0x00, 0x53, 0x18, 0xc0, 2, 1, 0x40]));
    }

    #[test]
    fn a_short_flow_is_padded_to_eleven_fields() {
        // next-incoming-id, incoming-window, next-outgoing-id, outgoing-window as uint0 (0x43).
        let flow = frame(&[0x00, 0x53, 0x13, 0xc0, 5, 4, 0x43, 0x43, 0x43, 0x43]);
        let mut expected = vec![0x00, 0x53, 0x13, 0xc0, 12, 11, 0x43, 0x43, 0x43, 0x43];
        expected.extend_from_slice(&[0x40; 7]);
        assert_eq!(pad(&flow), frame(&expected));
    }

    #[test]
    fn a_transfer_keeps_its_payload_after_the_padded_list() {
        let mut body = vec![0x00, 0x53, 0x14, 0xc0, 3, 2, 0x43, 0x43];
        body.extend_from_slice(b"payload");
        let mut expected = vec![0x00, 0x53, 0x14, 0xc0, 12, 11, 0x43, 0x43];
        expected.extend_from_slice(&[0x40; 9]);
        expected.extend_from_slice(b"payload");
        assert_eq!(pad(&frame(&body)), frame(&expected));
    }

    #[test]
    fn whole_frames_headers_and_sasl_frames_pass_unchanged() {
        let mut stream = b"AMQP\x03\x01\x00\x00".to_vec();
        // A SASL outcome (type 1) with one field stays short.
        let mut sasl = frame(&[0x00, 0x53, 0x44, 0xc0, 2, 1, 0x50]);
        sasl[5] = 1;
        stream.extend_from_slice(&sasl);
        stream.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        stream.extend_from_slice(&frame(&[0x00, 0x53, 0x16, 0xc0, 4, 3, 0x43, 0x42, 0x40]));
        // An empty frame (heartbeat).
        stream.extend_from_slice(&frame(&[]));
        assert_eq!(pad(&stream), stream);
    }

    #[test]
    fn frames_split_across_writes_are_padded_once_whole() {
        let close = frame(&[0x00, 0x53, 0x18, 0x45]);
        let mut padder = Padder::default();
        let mut out = Vec::new();
        padder.push(&close[..5], &mut out);
        assert!(out.is_empty());
        padder.push(&close[5..], &mut out);
        assert_eq!(out, frame(&[0x00, 0x53, 0x18, 0xc0, 2, 1, 0x40]));
    }
}
