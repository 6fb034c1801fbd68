//! What a caller appends ([`Record`], [`Target`]), what an endpoint reads back ([`Delivery`]), and the
//! byte layout of one record in a segment.
//!
//! ```text
//! offset size
//!  0     4    len        u32 LE: bytes that follow the 8-byte prefix (body = seq .. end of payload)
//!  4     4    crc        u32 LE: CRC-32 (IEEE) of the body
//!  8     8    seq        u64 LE: the record's sequence number, dense and increasing across the log
//! 16     8    enqueued   u64 LE: unix milliseconds when the log accepted it
//! 24     2    n          u16 LE: number of targets (at least 1)
//! 26     ..   n × target: priority u32 LE, expiry_unix_ms u64 LE (0 = never), name_len u16 LE, name (UTF-8)
//! ..     ..   payload    the rest of the body, opaque to the log
//! ```
//!
//! Endpoint names are stored in each record rather than as ids from a registry: a record then means the same
//! thing on its own, nothing else has to be made durable before it, and a name like `$upstream` costs about
//! as much as the priority and expiry beside it.

use std::sync::Arc;

use bytes::Bytes;

/// The priority Azure gives a route that names none: the lowest, delivered after every numbered one.
pub const LOWEST_PRIORITY: u32 = 2_000_000_000;

/// Longest endpoint name the log accepts, in bytes.
pub const MAX_ENDPOINT_NAME: usize = 1024;

/// Bytes before the body: `len` and `crc`.
pub(crate) const PREFIX: usize = 8;
/// Fixed part of the body: `seq`, `enqueued`, target count.
const FIXED: usize = 8 + 8 + 2;
/// Fixed part of one target: priority, expiry, name length.
const TARGET_FIXED: usize = 4 + 8 + 2;

/// One endpoint a record is routed to, with the priority and expiry of the route that sent it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The endpoint's name, e.g. `$upstream` or `edge1/filter/input1`.
    pub endpoint: Arc<str>,
    /// 0 is delivered first; [`LOWEST_PRIORITY`] (Azure's default) last. FIFO within a priority.
    pub priority: u32,
    /// Absolute unix milliseconds after which the record is skipped for this endpoint; 0 = never.
    pub expiry_unix_ms: u64,
}

impl Target {
    /// A target at the lowest priority that never expires.
    pub fn new(endpoint: impl Into<Arc<str>>) -> Self {
        Self {
            endpoint: endpoint.into(),
            priority: LOWEST_PRIORITY,
            expiry_unix_ms: 0,
        }
    }

    /// The same target at `priority`.
    #[must_use]
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// The same target expiring at `expiry_unix_ms` (0 = never).
    #[must_use]
    pub fn with_expiry(mut self, expiry_unix_ms: u64) -> Self {
        self.expiry_unix_ms = expiry_unix_ms;
        self
    }
}

/// A message to persist once and deliver to each of its targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The serialized message; the log never looks inside.
    pub payload: Bytes,
    /// Where it goes; at least one. Shared: the messages one sender sent together on one output usually go to
    /// the same targets, and the router makes the list once for all of them.
    pub targets: Arc<[Target]>,
}

impl Record {
    /// A record with no targets yet; add them with [`Record::with_target`].
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self::routed(payload, Arc::new([]))
    }

    /// A record for `targets`.
    pub fn routed(payload: impl Into<Bytes>, targets: Arc<[Target]>) -> Self {
        Self {
            payload: payload.into(),
            targets,
        }
    }

    /// A record for one endpoint at the lowest priority, never expiring.
    pub fn to(endpoint: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        Self::new(payload).with_target(Target::new(endpoint))
    }

    /// The same record with one more target.
    #[must_use]
    pub fn with_target(mut self, target: Target) -> Self {
        let mut targets = self.targets.to_vec();
        targets.push(target);
        self.targets = targets.into();
        self
    }

    /// Size of this record in a segment, prefix included.
    pub(crate) fn encoded_len(&self) -> usize {
        PREFIX
            + FIXED
            + self
                .targets
                .iter()
                .map(|t| TARGET_FIXED + t.endpoint.len())
                .sum::<usize>()
            + self.payload.len()
    }

    /// Why this record cannot be appended, if it cannot.
    pub(crate) fn invalid_reason(&self, max_record_bytes: usize) -> Option<String> {
        if self.targets.is_empty() {
            return Some("a record needs at least one target".into());
        }
        if self.targets.len() > usize::from(u16::MAX) {
            return Some(format!("{} targets (at most 65535)", self.targets.len()));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| t.endpoint.is_empty() || t.endpoint.len() > MAX_ENDPOINT_NAME)
        {
            return Some(format!(
                "endpoint name of {} bytes (1 to {MAX_ENDPOINT_NAME})",
                t.endpoint.len()
            ));
        }
        let len = self.encoded_len();
        (len > max_record_bytes)
            .then(|| format!("record of {len} bytes exceeds the limit of {max_record_bytes}"))
    }

    /// Appends the encoded record to `out`.
    #[cfg(test)]
    pub(crate) fn encode(&self, seq: u64, enqueued_unix_ms: u64, out: &mut Vec<u8>) {
        self.encode_head(seq, enqueued_unix_ms, out);
        out.extend_from_slice(&self.payload);
    }

    /// Appends the encoded record to `out` up to its payload, the prefix complete (its length and CRC count the
    /// payload): the payload's bytes must follow on disk, copied after these or written from its own buffer.
    pub(crate) fn encode_head(&self, seq: u64, enqueued_unix_ms: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; PREFIX]);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&enqueued_unix_ms.to_le_bytes());
        out.extend_from_slice(&(self.targets.len() as u16).to_le_bytes());
        for t in self.targets.iter() {
            out.extend_from_slice(&t.priority.to_le_bytes());
            out.extend_from_slice(&t.expiry_unix_ms.to_le_bytes());
            out.extend_from_slice(&(t.endpoint.len() as u16).to_le_bytes());
            out.extend_from_slice(t.endpoint.as_bytes());
        }
        let head = &out[start + PREFIX..];
        let len = (head.len() + self.payload.len()) as u32;
        let mut crc = crc32fast::Hasher::new();
        crc.update(head);
        crc.update(&self.payload);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.finalize().to_le_bytes());
    }
}

/// A record as one endpoint reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Sequence number; pass it to [`EndpointQueue::ack`](super::EndpointQueue::ack).
    pub seq: u64,
    /// This endpoint's priority for the record.
    pub priority: u32,
    /// Unix milliseconds when the log accepted it.
    pub enqueued_unix_ms: u64,
    /// This endpoint's expiry for the record (0 = never).
    pub expiry_unix_ms: u64,
    /// The payload as appended.
    pub payload: Bytes,
}

/// A decoded body, borrowing from the bytes it was read from.
#[derive(Debug)]
pub(crate) struct RecordView<'a> {
    pub seq: u64,
    pub enqueued_unix_ms: u64,
    pub targets: Vec<TargetView<'a>>,
    /// Where the payload starts within the body.
    pub payload_at: usize,
    /// The payload's length.
    pub payload_len: usize,
}

/// One target of a decoded body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TargetView<'a> {
    pub endpoint: &'a str,
    pub priority: u32,
    pub expiry_unix_ms: u64,
}

/// Reads the `len` and `crc` of a prefix.
pub(crate) fn parse_prefix(prefix: [u8; PREFIX]) -> (u32, u32) {
    let (len, crc) = prefix.split_at(4);
    let word = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
    (word(len), word(crc))
}

/// Checks `body` against `crc` and decodes it. The error says what is wrong, for the corruption report.
pub(crate) fn decode_body(body: &[u8], crc: u32) -> Result<RecordView<'_>, &'static str> {
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let mut r = Reader { bytes: body, at: 0 };
    let seq = r.u64()?;
    let enqueued_unix_ms = r.u64()?;
    let count = r.u16()?;
    if count == 0 {
        return Err("record without targets");
    }
    let mut targets = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let priority = r.u32()?;
        let expiry_unix_ms = r.u64()?;
        let len = r.u16()?;
        let name = r.take(usize::from(len))?;
        let endpoint = std::str::from_utf8(name).map_err(|_| "endpoint name is not UTF-8")?;
        targets.push(TargetView {
            endpoint,
            priority,
            expiry_unix_ms,
        });
    }
    Ok(RecordView {
        seq,
        enqueued_unix_ms,
        targets,
        payload_at: r.at,
        payload_len: body.len() - r.at,
    })
}

/// Smallest possible body: a record always has one target with a one-byte name.
pub(crate) const MIN_BODY: usize = FIXED + TARGET_FIXED + 1;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let slice = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or("record body ends early")?;
        self.at += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        self.array().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::new(&b"hello"[..])
            .with_target(Target::new("$upstream").with_priority(0))
            .with_target(Target::new("edge1/filter/input1").with_expiry(42))
    }

    #[test]
    fn an_encoded_record_decodes_to_the_same_fields() {
        let record = sample();
        let mut out = Vec::new();
        record.encode(7, 1000, &mut out);
        assert_eq!(out.len(), record.encoded_len());
        let (len, crc) = parse_prefix(out[..PREFIX].try_into().unwrap());
        assert_eq!(len as usize, out.len() - PREFIX);
        let body = &out[PREFIX..];
        let view = decode_body(body, crc).unwrap();
        assert_eq!((view.seq, view.enqueued_unix_ms), (7, 1000));
        assert_eq!(
            view.targets,
            vec![
                TargetView {
                    endpoint: "$upstream",
                    priority: 0,
                    expiry_unix_ms: 0
                },
                TargetView {
                    endpoint: "edge1/filter/input1",
                    priority: LOWEST_PRIORITY,
                    expiry_unix_ms: 42
                },
            ]
        );
        assert_eq!(&body[view.payload_at..], b"hello");
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut out = Vec::new();
        sample().encode(1, 2, &mut out);
        let (_, crc) = parse_prefix(out[..PREFIX].try_into().unwrap());
        out[PREFIX + 3] ^= 0x10;
        assert_eq!(
            decode_body(&out[PREFIX..], crc).unwrap_err(),
            "checksum mismatch"
        );
    }

    #[test]
    fn a_record_without_targets_or_too_large_is_invalid() {
        assert!(Record::new(&b"x"[..]).invalid_reason(1 << 20).is_some());
        let big = Record::to("e", vec![0; 100]);
        assert!(big.invalid_reason(50).is_some());
        assert!(big.invalid_reason(1 << 20).is_none());
        let long_name = Record::to("x".repeat(MAX_ENDPOINT_NAME + 1), vec![]);
        assert!(long_name.invalid_reason(1 << 20).is_some());
    }
}
