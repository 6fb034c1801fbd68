//! Outgoing QoS 1 publishes awaiting their PUBACK, indexed by packet id (after rumqtt's `outgoing` vector).
//!
//! Packet ids run 1..=capacity and index a pre-sized vector, so an ack is O(1). When every id is taken,
//! further publishes wait in a queue and take the next id that an ack frees; the client never sees more
//! than `capacity` unacknowledged publishes.

use std::collections::VecDeque;

use crate::packet::Publish;

/// A QoS 1 publish the client has not acknowledged yet.
#[derive(Debug, Clone)]
struct Pending {
    publish: Publish,
    /// The backend's delivery id (C2D and inputs), reported back on PUBACK.
    delivery: Option<u64>,
    /// Send order, so redelivery keeps it even after packet ids wrapped [MQTT-4.6.0-1].
    seq: u64,
}

/// Outgoing QoS 1 state of a session.
#[derive(Debug, Clone)]
pub struct Inflight {
    slots: Vec<Option<Pending>>,
    in_use: usize,
    next_pkid: u16,
    next_seq: u64,
    waiting: VecDeque<(Publish, Option<u64>)>,
}

impl Inflight {
    /// Room for `capacity` unacknowledged publishes (at least 1, at most 65535).
    pub fn new(capacity: u16) -> Self {
        let capacity = usize::from(capacity.max(1));
        Self {
            slots: vec![None; capacity],
            in_use: 0,
            next_pkid: 1,
            next_seq: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Publishes awaiting an ack, plus those waiting for a packet id.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.in_use + self.waiting.len()
    }

    /// Takes `publish` in: returns it with its packet id if one was free, else queues it.
    pub fn push(&mut self, publish: Publish, delivery: Option<u64>) -> Option<Publish> {
        if self.in_use == self.slots.len() {
            self.waiting.push_back((publish, delivery));
            return None;
        }
        Some(self.assign(publish, delivery))
    }

    fn assign(&mut self, mut publish: Publish, delivery: Option<u64>) -> Publish {
        // A free slot exists: scan from the last id handed out, so ids are reused as late as possible.
        let capacity = self.slots.len();
        let mut index = usize::from(self.next_pkid) - 1;
        while self.slots[index].is_some() {
            index = (index + 1) % capacity;
        }
        let pkid = (index + 1) as u16;
        self.next_pkid = if index + 1 == capacity { 1 } else { pkid + 1 };
        publish.pkid = pkid;
        self.slots[index] = Some(Pending {
            publish: publish.clone(),
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
        let next = self
            .waiting
            .pop_front()
            .map(|(publish, delivery)| self.assign(publish, delivery));
        Some((pending.delivery, next))
    }

    /// Whether the backend's delivery `id` is already awaiting an ack or queued, so a re-push is a duplicate.
    pub fn holds_delivery(&self, id: u64) -> bool {
        self.slots.iter().flatten().any(|p| p.delivery == Some(id))
            || self.waiting.iter().any(|(_, d)| *d == Some(id))
    }

    /// The unacknowledged publishes in the order they were first sent, flagged DUP [MQTT-3.3.1-1], for a
    /// resumed session [MQTT-4.4.0-1].
    pub fn redeliver(&self) -> Vec<Publish> {
        let mut pending: Vec<&Pending> = self.slots.iter().flatten().collect();
        pending.sort_by_key(|p| p.seq);
        pending
            .into_iter()
            .map(|p| {
                let mut publish = p.publish.clone();
                publish.dup = true;
                publish
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

    #[test]
    fn packet_ids_start_at_one_and_increase() {
        let mut inflight = Inflight::new(4);
        assert_eq!(inflight.push(publish("a"), None).unwrap().pkid, 1);
        assert_eq!(inflight.push(publish("b"), None).unwrap().pkid, 2);
    }

    #[test]
    fn incoming_puback_removes_the_matching_publish_and_reports_its_delivery() {
        let mut inflight = Inflight::new(4);
        let sent = inflight.push(publish("a"), Some(77)).unwrap();
        assert_eq!(inflight.ack(sent.pkid), Some((Some(77), None)));
        assert_eq!(inflight.len(), 0);
        assert_eq!(
            inflight.ack(sent.pkid),
            None,
            "a second ack for the same id is unknown"
        );
    }

    #[test]
    fn a_puback_for_an_unknown_or_zero_id_is_ignored() {
        let mut inflight = Inflight::new(4);
        assert_eq!(inflight.ack(0), None);
        assert_eq!(inflight.ack(3), None);
        assert_eq!(inflight.ack(9999), None);
    }

    #[test]
    fn publishes_beyond_capacity_wait_and_take_the_id_an_ack_frees() {
        let mut inflight = Inflight::new(2);
        inflight.push(publish("a"), None).unwrap();
        inflight.push(publish("b"), None).unwrap();
        assert!(inflight.push(publish("c"), Some(5)).is_none());
        assert_eq!(inflight.len(), 3);
        let (_, next) = inflight.ack(1).unwrap();
        let next = next.unwrap();
        assert_eq!((next.topic.as_str(), next.pkid), ("c", 1));
        assert!(inflight.holds_delivery(5));
    }

    #[test]
    fn packet_ids_wrap_around_and_skip_ids_still_in_use() {
        let mut inflight = Inflight::new(3);
        for topic in ["a", "b", "c"] {
            inflight.push(publish(topic), None).unwrap();
        }
        inflight.ack(2).unwrap();
        assert_eq!(inflight.push(publish("d"), None).unwrap().pkid, 2);
    }

    #[test]
    fn redelivery_keeps_the_send_order_and_sets_dup() {
        let mut inflight = Inflight::new(2);
        inflight.push(publish("a"), None).unwrap();
        inflight.push(publish("b"), None).unwrap();
        inflight.ack(1).unwrap();
        inflight.push(publish("c"), None).unwrap(); // takes id 1, but was sent after "b"
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
