//! The in-memory index over the log: for each endpoint, one lane per priority, each lane the sequence numbers
//! addressed to that endpoint at that priority, in order. Nothing here touches a file; the log rebuilds it at
//! open from the segments and the cursor file, and keeps it current as records are appended and acknowledged.
//!
//! A lane's durable cursor is `acked_through`: every slot of the lane up to that sequence number is done
//! (acknowledged, expired or dropped). Acknowledgements can arrive out of order, so the cursor only moves over
//! the done prefix of the lane; after a crash the slots past it are delivered again (at least once).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;

/// Where a slot stands for its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Not handed out yet.
    Pending,
    /// Handed out by `take`, waiting for its acknowledgement.
    InFlight,
    /// Acknowledged, or skipped as expired.
    Done,
}

/// One record as one endpoint sees it.
#[derive(Clone, Copy, Debug)]
struct Slot {
    seq: u64,
    expiry_unix_ms: u64,
    /// The record's payload, in bytes (saturated at `u32::MAX`), for reads bounded in bytes.
    bytes: u32,
    state: SlotState,
}

impl Slot {
    fn expired(&self, now_unix_ms: u64) -> bool {
        self.expiry_unix_ms != 0 && self.expiry_unix_ms <= now_unix_ms
    }
}

/// How much one `take` may still hand out: records, and bytes of their payloads. A record is handed out while
/// both are above zero, so the bytes can be passed by the last record's size, never more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    pub records: usize,
    pub bytes: usize,
}

impl Limit {
    /// Up to `records` records, whatever their size.
    pub fn records(records: usize) -> Self {
        Self {
            records,
            bytes: usize::MAX,
        }
    }

    fn reached(self) -> bool {
        self.records == 0 || self.bytes == 0
    }
}

/// What happened to slots during one operation, for the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub delivered: u64,
    pub expired: u64,
    pub dropped: u64,
}

/// The records of one endpoint at one priority, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    slots: VecDeque<Slot>,
    /// Index of the first slot `take` has not looked at; every slot before it is in flight or done.
    handed: usize,
    /// Every slot of this lane with a sequence number up to this one is done; persisted in the cursor file.
    pub acked_through: u64,
    /// Slots not done.
    live: usize,
    /// Slots in flight.
    in_flight: usize,
}

impl Lane {
    /// A lane whose records up to `acked_through` were already acknowledged.
    pub fn resuming(acked_through: u64) -> Self {
        Self {
            acked_through,
            ..Self::default()
        }
    }

    /// Adds the next record of this lane, whose payload is `bytes` long; sequence numbers must increase.
    pub fn push(&mut self, seq: u64, expiry_unix_ms: u64, bytes: usize) {
        debug_assert!(self.slots.back().is_none_or(|s| s.seq < seq));
        self.slots.push_back(Slot {
            seq,
            expiry_unix_ms,
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
            state: SlotState::Pending,
        });
        self.live += 1;
    }

    /// Hands out pending slots in order within `limit` (counting them off it), skipping (and finishing) expired
    /// ones.
    pub fn take(&mut self, limit: &mut Limit, now_unix_ms: u64, out: &mut Vec<u64>) -> Outcome {
        let mut outcome = Outcome::default();
        while !limit.reached() && self.handed < self.slots.len() {
            let slot = &mut self.slots[self.handed];
            self.handed += 1;
            if slot.state != SlotState::Pending {
                continue;
            }
            if slot.expired(now_unix_ms) {
                slot.state = SlotState::Done;
                self.live -= 1;
                outcome.expired += 1;
            } else {
                slot.state = SlotState::InFlight;
                self.in_flight += 1;
                out.push(slot.seq);
                limit.records -= 1;
                limit.bytes = limit.bytes.saturating_sub(slot.bytes as usize);
            }
        }
        self.compact();
        outcome
    }

    /// Whether `take` would hand out something (ignoring expiry).
    pub fn has_pending(&self) -> bool {
        self.slots
            .range(self.handed..)
            .any(|s| s.state == SlotState::Pending)
    }

    /// Marks an in-flight slot done; false if `seq` is not in flight in this lane.
    pub fn ack(&mut self, seq: u64) -> bool {
        // Acknowledgements mostly come in the order of delivery, so the slot is mostly the oldest one left
        // (the done ones before it are gone): found without a search through a long backlog.
        let index = if self.slots.front().is_some_and(|s| s.seq == seq) {
            0
        } else if let Ok(index) = self.slots.binary_search_by_key(&seq, |s| s.seq) {
            index
        } else {
            return false;
        };
        let slot = &mut self.slots[index];
        if slot.state != SlotState::InFlight {
            return false;
        }
        slot.state = SlotState::Done;
        self.in_flight -= 1;
        self.live -= 1;
        self.compact();
        true
    }

    /// Makes every in-flight slot pending again, so the next `take` hands it out anew.
    pub fn rewind(&mut self) {
        for slot in &mut self.slots {
            if slot.state == SlotState::InFlight {
                slot.state = SlotState::Pending;
            }
        }
        self.in_flight = 0;
        self.handed = 0;
    }

    /// Finishes expired slots at the front, so the cursor can pass them and their segments can go.
    pub fn purge_expired_front(&mut self, now_unix_ms: u64) -> Outcome {
        let mut outcome = Outcome::default();
        for slot in &mut self.slots {
            if slot.state == SlotState::Done {
                continue;
            }
            if !slot.expired(now_unix_ms) {
                break;
            }
            if slot.state == SlotState::InFlight {
                self.in_flight -= 1;
            }
            slot.state = SlotState::Done;
            self.live -= 1;
            outcome.expired += 1;
        }
        self.compact();
        outcome
    }

    /// Removes every slot up to `seq` because its segment is gone; the ones not done count as dropped.
    pub fn purge_through(&mut self, seq: u64) -> Outcome {
        let mut outcome = Outcome::default();
        while let Some(slot) = self.slots.front().filter(|s| s.seq <= seq) {
            match slot.state {
                SlotState::Done => {}
                SlotState::InFlight => {
                    self.in_flight -= 1;
                    self.live -= 1;
                    outcome.dropped += 1;
                }
                SlotState::Pending => {
                    self.live -= 1;
                    outcome.dropped += 1;
                }
            }
            self.slots.pop_front();
            self.handed = self.handed.saturating_sub(1);
        }
        self.acked_through = self.acked_through.max(seq);
        outcome
    }

    /// The oldest sequence number this lane still needs, if any.
    pub fn first_needed(&self) -> Option<u64> {
        self.slots.front().map(|s| s.seq)
    }

    /// The expiry of an in-flight slot.
    pub fn expiry_of(&self, seq: u64) -> Option<u64> {
        let index = self.slots.binary_search_by_key(&seq, |s| s.seq).ok()?;
        Some(self.slots[index].expiry_unix_ms)
    }

    /// Slots not yet done (pending or in flight).
    pub fn live(&self) -> usize {
        self.live
    }

    /// Slots handed out and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Drops the done prefix, moving the cursor over it.
    fn compact(&mut self) {
        while let Some(slot) = self.slots.front() {
            if slot.state != SlotState::Done {
                break;
            }
            self.acked_through = self.acked_through.max(slot.seq);
            self.slots.pop_front();
            self.handed = self.handed.saturating_sub(1);
        }
    }
}

/// Everything the log knows about one endpoint.
#[derive(Debug, Default)]
pub(crate) struct EndpointIndex {
    /// Lanes by priority, lowest number (first delivered) first.
    pub lanes: BTreeMap<u32, Lane>,
    /// Woken when records arrive or in-flight ones are rewound.
    pub notify: Arc<Notify>,
    pub delivered: u64,
    pub expired: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
}

impl EndpointIndex {
    /// Adds the counts of `outcome`.
    pub fn count(&mut self, outcome: Outcome) {
        self.delivered += outcome.delivered;
        self.expired += outcome.expired;
        self.dropped += outcome.dropped;
    }

    /// The lane at `priority`, created empty if needed.
    pub fn lane(&mut self, priority: u32) -> &mut Lane {
        self.lanes.entry(priority).or_default()
    }

    /// Hands out records within `limit`, highest priority first; returns `(seq, priority)` pairs.
    pub fn take(&mut self, mut limit: Limit, now_unix_ms: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut seqs = Vec::new();
        let mut outcome = Outcome::default();
        for (&priority, lane) in &mut self.lanes {
            if limit.reached() {
                break;
            }
            let taken = lane.take(&mut limit, now_unix_ms, &mut seqs);
            outcome.expired += taken.expired;
            out.extend(seqs.drain(..).map(|seq| (seq, priority)));
        }
        self.count(outcome);
        out
    }

    /// Acknowledges `seq` in whichever lane holds it in flight.
    pub fn ack(&mut self, seq: u64) -> bool {
        let acked = self.lanes.values_mut().any(|lane| lane.ack(seq));
        if acked {
            self.delivered += 1;
        }
        acked
    }

    /// Finishes `seq`, in flight, as refused by its consumer for good: done, but not delivered.
    pub fn dead_letter(&mut self, seq: u64) -> bool {
        let done = self.lanes.values_mut().any(|lane| lane.ack(seq));
        if done {
            self.dead_lettered += 1;
        }
        done
    }

    /// Slots not yet done, over all lanes.
    pub fn queued(&self) -> u64 {
        self.lanes.values().map(|l| l.live() as u64).sum()
    }

    /// Slots in flight, over all lanes.
    pub fn in_flight(&self) -> u64 {
        self.lanes.values().map(|l| l.in_flight() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(seqs: &[u64]) -> Lane {
        let mut lane = Lane::default();
        for &s in seqs {
            lane.push(s, 0, 1);
        }
        lane
    }

    fn take(lane: &mut Lane, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        lane.take(&mut Limit::records(max), 1, &mut out);
        out
    }

    #[test]
    fn take_hands_out_each_record_once_in_order() {
        let mut lane = lane(&[3, 5, 9]);
        assert_eq!(take(&mut lane, 2), vec![3, 5]);
        assert_eq!(take(&mut lane, 2), vec![9]);
        assert!(take(&mut lane, 2).is_empty());
        assert_eq!((lane.live(), lane.in_flight()), (3, 3));
    }

    #[test]
    fn the_cursor_moves_only_over_the_acknowledged_prefix() {
        let mut lane = lane(&[3, 5, 9]);
        take(&mut lane, 3);
        assert!(lane.ack(5));
        assert_eq!(lane.acked_through, 0);
        assert!(lane.ack(3));
        assert_eq!(lane.acked_through, 5);
        assert!(
            !lane.ack(5),
            "an acknowledged record cannot be acknowledged twice"
        );
        assert_eq!(lane.first_needed(), Some(9));
    }

    #[test]
    fn rewind_hands_out_unacknowledged_records_again() {
        let mut lane = lane(&[1, 2, 3]);
        take(&mut lane, 3);
        assert!(lane.ack(2));
        lane.rewind();
        assert_eq!(take(&mut lane, 10), vec![1, 3]);
    }

    #[test]
    fn expired_records_are_skipped_and_counted() {
        let mut lane = Lane::default();
        lane.push(1, 5, 1);
        lane.push(2, 0, 1);
        lane.push(3, 50, 1);
        let mut out = Vec::new();
        let outcome = lane.take(&mut Limit::records(10), 10, &mut out);
        assert_eq!(out, vec![2, 3]);
        assert_eq!(outcome.expired, 1);
        assert_eq!(lane.acked_through, 1);
    }

    #[test]
    fn purging_a_dropped_segment_counts_what_was_not_done() {
        let mut lane = lane(&[1, 2, 3, 4]);
        take(&mut lane, 2);
        assert!(lane.ack(1));
        let outcome = lane.purge_through(3);
        assert_eq!(outcome.dropped, 2);
        assert_eq!(take(&mut lane, 10), vec![4]);
        assert_eq!(lane.acked_through, 3);
        assert!(!lane.ack(2));
    }

    #[test]
    fn an_endpoint_hands_out_higher_priorities_first() {
        let mut endpoint = EndpointIndex::default();
        endpoint.lane(5).push(1, 0, 1);
        endpoint.lane(0).push(2, 0, 1);
        endpoint.lane(5).push(3, 0, 1);
        endpoint.lane(0).push(4, 0, 1);
        assert_eq!(
            endpoint.take(Limit::records(3), 1),
            vec![(2, 0), (4, 0), (1, 5)]
        );
        assert!(endpoint.ack(4));
        assert_eq!(endpoint.delivered, 1);
        assert_eq!((endpoint.queued(), endpoint.in_flight()), (3, 2));
    }

    #[test]
    fn a_take_stops_once_its_bytes_are_reached_across_lanes_and_hands_out_at_least_one() {
        let mut endpoint = EndpointIndex::default();
        endpoint.lane(0).push(1, 0, 400);
        endpoint.lane(0).push(2, 0, 400);
        endpoint.lane(5).push(3, 0, 400);
        endpoint.lane(5).push(4, 0, 10);
        let limit = Limit {
            records: 10,
            bytes: 1000,
        };
        // 400 + 400 leaves 200: the next record is handed out and passes the bytes by less than its size.
        assert_eq!(endpoint.take(limit, 1), vec![(1, 0), (2, 0), (3, 5)]);
        let one_byte = Limit {
            records: 10,
            bytes: 1,
        };
        assert_eq!(endpoint.take(one_byte, 1), vec![(4, 5)]);
        let mut big = EndpointIndex::default();
        big.lane(0).push(7, 0, 1 << 20);
        assert_eq!(
            big.take(one_byte, 1),
            vec![(7, 0)],
            "a record larger than the bytes is still handed out alone"
        );
    }

    #[test]
    fn a_dead_lettered_record_is_done_but_not_delivered() {
        let mut endpoint = EndpointIndex::default();
        endpoint.lane(0).push(1, 0, 1);
        endpoint.lane(0).push(2, 0, 1);
        endpoint.take(Limit::records(2), 1);
        assert!(endpoint.dead_letter(1));
        assert!(endpoint.ack(2));
        assert!(!endpoint.dead_letter(1));
        assert_eq!((endpoint.delivered, endpoint.dead_lettered), (1, 1));
        assert_eq!(endpoint.queued(), 0);
        assert_eq!(endpoint.lanes[&0].acked_through, 2);
    }
}
