//! The MQTT floods: authenticated devices that write PINGREQs or twin GETs as fast as their socket takes them
//! and never read a byte, so every answer the hub makes stays with the hub. A device the hub disconnects
//! connects again at once: the hub is under attack for the whole duration, not just until the first close.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::BytesMut;
use outpost_mqtt::{Packet, PacketError, Publish, QoS};
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::device::{DeviceCredentials, DeviceEndpoint};

/// Packets encoded into one write.
const BATCH: usize = 256;

/// A connection whose last write completed longer ago than this is stalled: the hub has stopped reading it.
const STALL: Duration = Duration::from_secs(1);

/// Pause after a failed connection attempt, so that a refusing hub is not hammered in a tight loop.
const RETRY: Duration = Duration::from_millis(100);

/// What the flooding devices send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// PINGREQ, answered by a PINGRESP.
    Pingreq,
    /// `$iothub/twin/GET/?$rid=N` at QoS 0 (empty payload), answered by the whole twin.
    TwinGet,
}

impl FloodKind {
    /// The packet as the report names it.
    pub fn packet(self) -> &'static str {
        match self {
            Self::Pingreq => "PINGREQ",
            Self::TwinGet => "twin GET",
        }
    }

    /// [`BATCH`] packets in one buffer; twin GETs number their request ids from `rid`.
    fn batch(self, rid: &mut u64) -> Result<BytesMut, PacketError> {
        let mut buf = BytesMut::new();
        for _ in 0..BATCH {
            let packet = match self {
                Self::Pingreq => Packet::PingReq,
                Self::TwinGet => {
                    *rid += 1;
                    Packet::Publish(Publish::new(
                        format!("$iothub/twin/GET/?$rid={rid}"),
                        QoS::AtMostOnce,
                        Vec::new(),
                    ))
                }
            };
            outpost_mqtt::encode(&packet, &mut buf)?;
        }
        Ok(buf)
    }
}

/// How the flooding connections fared.
#[derive(Debug, Clone, Default)]
pub struct FloodOutcome {
    /// Connections the hub accepted (CONNACK), reconnections included.
    pub connections: usize,
    /// Connections that ended with a write error: the hub closed them.
    pub closed_by_hub: usize,
    /// Connections still open when the attack ended.
    pub open_at_end: usize,
    /// Of those, the ones whose writes had been blocked for over [`STALL`] (the hub no longer read them).
    pub stalled_at_end: usize,
    /// Connection attempts that failed (TCP, TLS, or a refused CONNECT).
    pub failed_opens: usize,
    /// The first failure, in words.
    pub first_failure: Option<String>,
    /// Packets the kernel took from the flooders (a write counts once it returns: much of it waits in socket
    /// buffers, which are kernel memory, not the hub's RSS).
    pub packets_written: u64,
    /// For each connection the hub closed: time from its CONNACK to the failed write.
    pub close_after: Vec<Duration>,
    /// The write errors that ended connections, by kind, with their counts.
    pub close_errors: BTreeMap<String, usize>,
}

impl FloodOutcome {
    fn merge(&mut self, other: Self) {
        self.connections += other.connections;
        self.closed_by_hub += other.closed_by_hub;
        self.open_at_end += other.open_at_end;
        self.stalled_at_end += other.stalled_at_end;
        self.failed_opens += other.failed_opens;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.packets_written += other.packets_written;
        self.close_after.extend(other.close_after);
        for (kind, count) in other.close_errors {
            *self.close_errors.entry(kind).or_default() += count;
        }
    }
}

/// Floods the hub from every device in `devices` until `duration` has passed; every connection is closed
/// when this returns.
pub async fn run(
    endpoint: &DeviceEndpoint,
    devices: &[DeviceCredentials],
    kind: FloodKind,
    duration: Duration,
) -> FloodOutcome {
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for device in devices {
        let endpoint = endpoint.clone();
        let device = device.clone();
        tasks.spawn(async move { flood(&endpoint, &device, kind, deadline).await });
    }
    let mut outcome = FloodOutcome::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(tally) => outcome.merge(tally),
            Err(panic) => {
                outcome.failed_opens += 1;
                outcome
                    .first_failure
                    .get_or_insert_with(|| format!("a flooding task failed: {panic}"));
            }
        }
    }
    outcome
}

/// One device: connect, write until the hub closes the connection, connect again, until `deadline`.
async fn flood(
    endpoint: &DeviceEndpoint,
    device: &DeviceCredentials,
    kind: FloodKind,
    deadline: Instant,
) -> FloodOutcome {
    let mut tally = FloodOutcome::default();
    let mut rid = 0;
    let source = IpAddr::V4(Ipv4Addr::LOCALHOST);
    while Instant::now() < deadline {
        let mut stream =
            match tokio::time::timeout_at(deadline, endpoint.open(device, source)).await {
                Err(_) => break,
                Ok(Err(error)) => {
                    tally.failed_opens += 1;
                    tally.first_failure.get_or_insert_with(|| error.explain());
                    tokio::time::sleep_until(deadline.min(Instant::now() + RETRY)).await;
                    continue;
                }
                Ok(Ok(stream)) => stream,
            };
        tally.connections += 1;
        let connected = Instant::now();
        let mut last_write = connected;
        loop {
            let batch = match kind.batch(&mut rid) {
                Ok(batch) => batch,
                Err(error) => {
                    tally.first_failure.get_or_insert_with(|| {
                        format!("cannot encode a {}: {error}", kind.packet())
                    });
                    return tally;
                }
            };
            let write = async {
                stream.write_all(&batch).await?;
                stream.flush().await
            };
            match tokio::time::timeout_at(deadline, write).await {
                Err(_) => {
                    tally.open_at_end += 1;
                    if last_write.elapsed() > STALL {
                        tally.stalled_at_end += 1;
                    }
                    return tally;
                }
                Ok(Err(error)) => {
                    tally.closed_by_hub += 1;
                    tally.close_after.push(connected.elapsed());
                    *tally
                        .close_errors
                        .entry(format!("{:?}", error.kind()))
                        .or_default() += 1;
                    break;
                }
                Ok(Ok(())) => {
                    tally.packets_written += BATCH as u64;
                    last_write = Instant::now();
                }
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pingreq_batch_is_two_bytes_a_packet() {
        let batch = FloodKind::Pingreq.batch(&mut 0).unwrap();
        assert_eq!(batch.len(), 2 * BATCH);
        assert_eq!(&batch[..2], &[0xC0, 0x00]);
    }

    #[test]
    fn twin_gets_number_their_request_ids_on() {
        let mut rid = 0;
        let mut first = FloodKind::TwinGet.batch(&mut rid).unwrap();
        assert_eq!(rid, BATCH as u64);
        let Some(Packet::Publish(publish)) = outpost_mqtt::decode(&mut first, 1024).unwrap() else {
            panic!("not a PUBLISH");
        };
        assert_eq!(publish.topic, "$iothub/twin/GET/?$rid=1");
        assert_eq!(publish.qos, QoS::AtMostOnce);
        FloodKind::TwinGet.batch(&mut rid).unwrap();
        assert_eq!(rid, 2 * BATCH as u64);
    }
}
