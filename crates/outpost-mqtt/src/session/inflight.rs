//! Outgoing QoS 1 publishes awaiting their PUBACK, indexed by packet id (after rumqtt's `outgoing` vector).
//!
//! Packet ids run 1..=capacity and index a vector, so an ack is O(1). The vector grows as publishes are
//! outstanding at once, up to the capacity, rather than being sized up front: most sessions never have more
//! than a few in flight, and a held connection should not pay for a hundred empty slots. When every id is taken,
//! further publishes wait in a queue and take the next id that an ack frees; the client never sees more
//! than `capacity` unacknowledged publishes. The queue is bounded too: a publish past it is refused
//! ([`Pushed::Full`]) and the session decides what that means.

use std::collections::VecDeque;

use foldhash::{HashSet, HashSetExt as _};

use crate::packet::Publish;

/// A QoS 1 publish the client has not acknowledged yet.
#[derive(Debug, Clone)]
struct Pending {
    /// A copy to send again, kept only for a session that can resume ([`Inflight::without_copies`]).
    publish: Option<Publish>,
    /// The backend's delivery id (C2D and inputs), reported back on PUBACK.
    delivery: Option<u64>,
    /// Send order, so redelivery keeps it even after packet ids wrapped [MQTT-4.6.0-1].
    seq: u64,
}

/// Outgoing QoS 1 state of a session.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Indexed by packet id − 1; never longer than `capacity`.
    slots: Vec<Option<Pending>>,
    capacity: usize,
    in_use: usize,
    next_pkid: u16,
    next_seq: u64,
    waiting: VecDeque<(Publish, Option<u64>)>,
    max_waiting: usize,
    /// The delivery ids of the publishes in `slots` and `waiting`, so that a duplicate is found without a scan
    /// of the window for every delivery (a cost that grew with the window).
    deliveries: DeliveryIds,
    /// Whether a publish sent is also kept, to be sent again when the session resumes.
    keep_copies: bool,
}

/// A set of delivery ids, boxed and made on the first insert: every held connection's task carries its session
/// (a bare set would add 120 bytes to each), and many never receive a delivery.
#[derive(Debug, Clone, Default)]
struct DeliveryIds(Option<Box<HashSet<u64>>>);

impl DeliveryIds {
    fn insert(&mut self, id: u64) {
        self.0
            .get_or_insert_with(|| Box::new(HashSet::new()))
            .insert(id);
    }

    fn remove(&mut self, id: u64) {
        if let Some(ids) = &mut self.0 {
            ids.remove(&id);
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.0.as_ref().is_some_and(|ids| ids.contains(&id))
    }
}

/// What became of a publish handed to [`Inflight::push`].
#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    /// It took a packet id: send it now.
    Send(Publish),
    /// Every id is taken: it waits for an ack.
    Queued,
    /// Every id is taken and the queue is full: it was not taken.
    Full,
}

impl Inflight {
    /// Room for `capacity` unacknowledged publishes (at least 1, at most 65535) and `max_waiting` more queued.
    pub fn new(capacity: u16, max_waiting: usize) -> Self {
        Self {
            slots: Vec::new(),
            capacity: usize::from(capacity.max(1)),
            in_use: 0,
            next_pkid: 1,
            next_seq: 0,
            waiting: VecDeque::new(),
            max_waiting,
            deliveries: DeliveryIds::default(),
            keep_copies: true,
        }
    }

    /// The same, for a clean session, which never resumes [MQTT-3.1.2-6]: what it sends is never sent again,
    /// so no copy of it is kept (a string and a reference count per delivered message) and
    /// [`redeliver`](Self::redeliver) has nothing to give.
    pub fn without_copies(mut self) -> Self {
        self.keep_copies = false;
        self
    }

    /// Publishes awaiting an ack, plus those waiting for a packet id.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.in_use + self.waiting.len()
    }

    /// Takes `publish` in: with its packet id if one is free, else into the queue if it has room.
    /// A delivery id held already (see [`holds_delivery`](Self::holds_delivery)) must not be pushed again.
    pub fn push(&mut self, publish: Publish, delivery: Option<u64>) -> Pushed {
        let pushed = if self.in_use < self.capacity {
            Pushed::Send(self.assign(publish, delivery))
        } else if self.waiting.len() >= self.max_waiting {
            return Pushed::Full;
        } else {
            self.waiting.push_back((publish, delivery));
            Pushed::Queued
        };
        if let Some(delivery) = delivery {
            self.deliveries.insert(delivery);
        }
        pushed
    }

    fn assign(&mut self, mut publish: Publish, delivery: Option<u64>) -> Publish {
        // A free id exists: scan from the last id handed out, so ids are reused as late as possible; an id past
        // the slots grown so far is free and grows them by one.
        let capacity = self.capacity;
        let mut index = usize::from(self.next_pkid) - 1;
        while self.slots.get(index).is_some_and(Option::is_some) {
            index = (index + 1) % capacity;
        }
        if index >= self.slots.len() {
            self.slots.resize(index + 1, None);
        }
        let pkid = (index + 1) as u16;
        self.next_pkid = if index + 1 == capacity { 1 } else { pkid + 1 };
        publish.pkid = pkid;
        self.slots[index] = Some(Pending {
            publish: self.keep_copies.then(|| publish.clone()),
            delivery,
            seq: self.next_seq,
        });
        self.next_seq += 1;
        self.in_use += 1;
        publish
    }

    /// Handles a PUBACK: `None` if nothing waited for that id; else the delivery id it completes (if any)
    /// and the queued publish that now gets an id and must be sent (if any).
    pub fn ack(&mut self, pkid: u16) -> Option<(Option<u64>, Option<Publish>)> {
        let slot = self.slots.get_mut(usize::from(pkid).checked_sub(1)?)?;
        let pending = slot.take()?;
        self.in_use -= 1;
        if let Some(delivery) = pending.delivery {
            self.deliveries.remove(delivery);
        }
        let next = self
            .waiting
            .pop_front()
            .map(|(publish, delivery)| self.assign(publish, delivery));
        Some((pending.delivery, next))
    }

    /// Whether the backend's delivery `id` is already awaiting an ack or queued, so a re-push is a duplicate.
    pub fn holds_delivery(&self, id: u64) -> bool {
        self.deliveries.contains(id)
    }

    /// The unacknowledged publishes in the order they were first sent, flagged DUP [MQTT-3.3.1-1], for a
    /// resumed session [MQTT-4.4.0-1].
    pub fn redeliver(&self) -> Vec<Publish> {
        let mut pending: Vec<&Pending> = self.slots.iter().flatten().collect();
        pending.sort_by_key(|p| p.seq);
        pending
            .into_iter()
            .filter_map(|p| {
                let mut publish = p.publish.clone()?;
                publish.dup = true;
                Some(publish)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::QoS;

    fn publish(topic: &str) -> Publish {
        Publish::new(topic, QoS::AtLeastOnce, &b""[..])
    }

    fn sent(pushed: Pushed) -> Publish {
        match pushed {
            Pushed::Send(publish) => publish,
            other => panic!("expected a packet id, got {other:?}"),
        }
    }

    #[test]
    fn packet_ids_start_at_one_and_increase() {
        let mut inflight = Inflight::new(4, 16);
        assert_eq!(sent(inflight.push(publish("a"), None)).pkid, 1);
        assert_eq!(sent(inflight.push(publish("b"), None)).pkid, 2);
    }

    #[test]
    fn incoming_puback_removes_the_matching_publish_and_reports_its_delivery() {
        let mut inflight = Inflight::new(4, 16);
        let first = sent(inflight.push(publish("a"), Some(77)));
        assert_eq!(inflight.ack(first.pkid), Some((Some(77), None)));
        assert_eq!(inflight.len(), 0);
        assert_eq!(
            inflight.ack(first.pkid),
            None,
            "a second ack for the same id is unknown"
        );
    }

    #[test]
    fn a_puback_for_an_unknown_or_zero_id_is_ignored() {
        let mut inflight = Inflight::new(4, 16);
        assert_eq!(inflight.ack(0), None);
        assert_eq!(inflight.ack(3), None);
        assert_eq!(inflight.ack(9999), None);
    }

    #[test]
    fn publishes_beyond_capacity_wait_and_take_the_id_an_ack_frees() {
        let mut inflight = Inflight::new(2, 16);
        sent(inflight.push(publish("a"), None));
        sent(inflight.push(publish("b"), None));
        assert_eq!(inflight.push(publish("c"), Some(5)), Pushed::Queued);
        assert_eq!(inflight.len(), 3);
        let (_, next) = inflight.ack(1).unwrap();
        let next = next.unwrap();
        assert_eq!((next.topic.as_str(), next.pkid), ("c", 1));
        assert!(inflight.holds_delivery(5));
    }

    #[test]
    fn a_delivery_is_held_from_its_push_to_its_ack_whether_sent_or_queued() {
        let mut inflight = Inflight::new(1, 4);
        let first = sent(inflight.push(publish("a"), Some(3)));
        assert_eq!(inflight.push(publish("b"), Some(4)), Pushed::Queued);
        assert!(inflight.holds_delivery(3) && inflight.holds_delivery(4));
        assert!(!inflight.holds_delivery(5), "never pushed");
        let (_, next) = inflight.ack(first.pkid).unwrap();
        assert!(!inflight.holds_delivery(3), "acknowledged");
        assert!(
            inflight.holds_delivery(4),
            "moved from the queue to a packet id"
        );
        inflight.ack(next.unwrap().pkid).unwrap();
        assert!(!inflight.holds_delivery(4));
        assert!(
            inflight
                .deliveries
                .0
                .as_ref()
                .is_some_and(|ids| ids.is_empty()),
            "nothing is left behind once all are acknowledged"
        );
    }

    #[test]
    fn a_publish_past_the_queue_is_refused_and_nothing_grows() {
        let mut inflight = Inflight::new(1, 2);
        sent(inflight.push(publish("a"), None));
        assert_eq!(inflight.push(publish("b"), None), Pushed::Queued);
        assert_eq!(inflight.push(publish("c"), None), Pushed::Queued);
        assert_eq!(inflight.push(publish("d"), Some(9)), Pushed::Full);
        assert_eq!(inflight.len(), 3);
        assert!(
            !inflight.holds_delivery(9),
            "a refused delivery is not held"
        );
    }

    #[test]
    fn without_copies_acks_and_delivery_ids_work_and_nothing_is_kept_to_send_again() {
        let mut inflight = Inflight::new(2, 4).without_copies();
        let first = sent(inflight.push(publish("a"), Some(7)));
        sent(inflight.push(publish("b"), None));
        assert_eq!(inflight.push(publish("c"), Some(8)), Pushed::Queued);
        assert!(inflight.holds_delivery(7) && inflight.holds_delivery(8));
        assert!(inflight.slots.iter().flatten().all(|p| p.publish.is_none()));
        assert!(inflight.redeliver().is_empty());
        let (delivery, next) = inflight.ack(first.pkid).unwrap();
        assert_eq!(delivery, Some(7));
        assert_eq!(next.unwrap().topic, "c");
    }

    #[test]
    fn the_table_grows_only_as_far_as_publishes_are_outstanding() {
        let mut inflight = Inflight::new(100, 16);
        assert_eq!(inflight.slots.capacity(), 0, "nothing allocated up front");
        let first = sent(inflight.push(publish("a"), None));
        inflight.ack(first.pkid).unwrap();
        sent(inflight.push(publish("b"), None));
        assert_eq!(inflight.slots.len(), 2);
    }

    #[test]
    fn packet_ids_wrap_around_and_skip_ids_still_in_use() {
        let mut inflight = Inflight::new(3, 16);
        for topic in ["a", "b", "c"] {
            sent(inflight.push(publish(topic), None));
        }
        inflight.ack(2).unwrap();
        assert_eq!(sent(inflight.push(publish("d"), None)).pkid, 2);
    }

    #[test]
    fn redelivery_keeps_the_send_order_and_sets_dup() {
        let mut inflight = Inflight::new(2, 16);
        sent(inflight.push(publish("a"), None));
        sent(inflight.push(publish("b"), None));
        inflight.ack(1).unwrap();
        sent(inflight.push(publish("c"), None)); // takes id 1, but was sent after "b"
        let again: Vec<_> = inflight
            .redeliver()
            .into_iter()
            .map(|p| (p.topic, p.pkid, p.dup))
            .collect();
        assert_eq!(
            again,
            vec![("b".to_owned(), 2, true), ("c".to_owned(), 1, true)]
        );
    }
}
