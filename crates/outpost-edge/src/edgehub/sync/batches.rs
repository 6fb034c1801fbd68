//! How the `$upstream` queue is cut into requests to the hub: a pure state machine, no I/O and no clock.
//!
//! Messages taken from the log wait here until the hub has settled them. A request holds at most
//! `max_count` messages and `max_bytes` of encoded JSON, so the hub's body limit is never reached. When the
//! hub refuses a request as a whole (a 4xx), the request is split in halves and each half goes alone, until
//! the one message the hub refuses by itself stands alone: that one, and only that one, is dead-lettered.
//! Nothing the hub refused is ever counted as delivered. When the hub is unreachable, everything taken is
//! handed back to the log (rewound) and goes again in order.

use std::collections::VecDeque;

/// Messages taken from the log at a time while filling a request: with messages of up to 256 KB, what waits
/// here stays near `max_bytes` instead of `max_count` full-size messages.
pub const TAKE_AT_A_TIME: usize = 32;

/// One message taken from the log and not yet settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken<T> {
    /// Its sequence number in the log.
    pub seq: u64,
    /// Its size in the request body (JSON-encoded, with its separator).
    pub bytes: usize,
    /// The message itself.
    pub item: T,
}

/// What the hub's refusal of the last request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request held several messages: it was split, and its halves go next, one request each.
    Split,
    /// The request held one message, the hub refused that message by itself: dead-letter it (after making
    /// sure the link as a whole is still accepted) with [`UpstreamBatches::dead_lettered`].
    Alone(u64),
}

/// The upstream queue's messages between the log and the hub.
#[derive(Debug)]
pub struct UpstreamBatches<T> {
    max_count: usize,
    max_bytes: usize,
    /// Taken from the log, oldest first; a request is always a prefix.
    pending: VecDeque<Taken<T>>,
    /// Sizes of the groups at the front of `pending` that go as one request each (halves of refused
    /// requests), front first. While any is left nothing else is sent and nothing more is taken.
    groups: VecDeque<usize>,
    /// The messages of the request in flight (a prefix of `pending`); 0 when none is.
    sending: usize,
}

impl<T> UpstreamBatches<T> {
    /// Requests of at most `max_count` messages and `max_bytes` (a single larger message still goes alone).
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            max_count: max_count.max(1),
            max_bytes,
            pending: VecDeque::new(),
            groups: VecDeque::new(),
            sending: 0,
        }
    }

    /// How many messages to take from the log before cutting the next request (0: take none). While a request is
    /// in flight, what it wants is the request after it: taken (read and decoded) while the hub stores this one.
    pub fn wants(&self) -> usize {
        let waiting = self.pending.len() - self.sending;
        let bytes: usize = self
            .pending
            .iter()
            .skip(self.sending)
            .map(|t| t.bytes)
            .sum();
        if !self.groups.is_empty() || waiting >= self.max_count || bytes >= self.max_bytes {
            return 0;
        }
        (self.max_count - waiting).min(TAKE_AT_A_TIME)
    }

    /// The messages of the request in flight.
    pub fn in_flight(&mut self) -> &[Taken<T>] {
        &self.pending.make_contiguous()[..self.sending]
    }

    /// Adds a message taken from the log (after the ones already here).
    pub fn push(&mut self, taken: Taken<T>) {
        self.pending.push_back(taken);
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next request: the next split half if any, else as many messages as fit the count and the bytes
    /// (at least one). It stays in flight until [`stored`](Self::stored), [`refused`](Self::refused) or
    /// [`unreachable`](Self::unreachable).
    pub fn next_request(&mut self) -> &[Taken<T>] {
        self.sending = if let Some(&group) = self.groups.front() {
            group
        } else {
            let mut count = 0;
            let mut bytes = 0;
            for taken in self.pending.iter().take(self.max_count) {
                if count > 0 && bytes + taken.bytes > self.max_bytes {
                    break;
                }
                count += 1;
                bytes += taken.bytes;
            }
            count
        };
        &self.pending.make_contiguous()[..self.sending]
    }

    /// The hub stored the request in flight: returns the sequence numbers to acknowledge in the log.
    pub fn stored(&mut self) -> Vec<u64> {
        let seqs = self.pending.drain(..self.sending).map(|t| t.seq).collect();
        self.settled();
        seqs
    }

    /// The hub refused the request in flight (a 4xx).
    pub fn refused(&mut self) -> Refusal {
        if self.sending <= 1 {
            return Refusal::Alone(self.pending.front().map_or(0, |t| t.seq));
        }
        let first = self.sending / 2;
        let second = self.sending - first;
        if !self.groups.is_empty() {
            self.groups.pop_front();
        }
        self.groups.push_front(second);
        self.groups.push_front(first);
        self.sending = 0;
        Refusal::Split
    }

    /// The message the hub refused alone leaves the queue; returns it to be dead-lettered in the log.
    pub fn dead_lettered(&mut self) -> Option<Taken<T>> {
        let taken = self.pending.pop_front();
        self.sending = 1;
        self.settled();
        taken
    }

    /// The hub did not answer: everything taken goes back to the log (the caller rewinds it).
    pub fn unreachable(&mut self) {
        self.pending.clear();
        self.groups.clear();
        self.sending = 0;
    }

    fn settled(&mut self) {
        if !self.groups.is_empty() {
            self.groups.pop_front();
        }
        self.sending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(sizes: &[usize], max_count: usize, max_bytes: usize) -> UpstreamBatches<()> {
        let mut batches = UpstreamBatches::new(max_count, max_bytes);
        for (i, &bytes) in sizes.iter().enumerate() {
            batches.push(Taken {
                seq: i as u64 + 1,
                bytes,
                item: (),
            });
        }
        batches
    }

    fn seqs(request: &[Taken<()>]) -> Vec<u64> {
        request.iter().map(|t| t.seq).collect()
    }

    /// Sends requests to a hub that refuses any request holding one of `bad`, until the queue is empty;
    /// returns what was stored, what was dead-lettered, and how many requests went.
    fn drain(batches: &mut UpstreamBatches<()>, bad: &[u64]) -> (Vec<u64>, Vec<u64>, usize) {
        let (mut stored, mut dead, mut requests) = (Vec::new(), Vec::new(), 0);
        while !batches.is_empty() {
            requests += 1;
            let request = seqs(batches.next_request());
            if request.iter().any(|s| bad.contains(s)) {
                if let Refusal::Alone(seq) = batches.refused() {
                    assert_eq!(request, [seq]);
                    dead.push(batches.dead_lettered().unwrap().seq);
                }
            } else {
                stored.extend(batches.stored());
            }
        }
        (stored, dead, requests)
    }

    #[test]
    fn a_request_is_cut_by_bytes_before_it_reaches_the_budget() {
        // 30 messages of 100 KB encoded as ~137 KB each, under a 1 MiB budget: 7 per request.
        let mut batches = batches(&[137_000; 30], 500, 1 << 20);
        let mut sizes = Vec::new();
        while !batches.is_empty() {
            let request = batches.next_request();
            assert!(request.iter().map(|t| t.bytes).sum::<usize>() <= 1 << 20);
            sizes.push(request.len());
            batches.stored();
        }
        assert_eq!(sizes, [7, 7, 7, 7, 2]);
    }

    #[test]
    fn a_request_is_cut_by_count() {
        let mut batches = batches(&[10; 12], 5, 1 << 20);
        assert_eq!(batches.next_request().len(), 5);
    }

    #[test]
    fn a_single_message_over_the_budget_still_goes_alone() {
        let mut batches = batches(&[2_000_000, 10], 500, 1 << 20);
        assert_eq!(seqs(batches.next_request()), [1]);
        assert_eq!(batches.stored(), [1]);
        assert_eq!(seqs(batches.next_request()), [2]);
    }

    #[test]
    fn a_refused_request_is_split_in_halves_that_go_alone_in_order() {
        let mut batches = batches(&[10; 10], 500, 1 << 20);
        assert_eq!(batches.next_request().len(), 10);
        assert_eq!(batches.refused(), Refusal::Split);
        assert_eq!(seqs(batches.next_request()), [1, 2, 3, 4, 5]);
        assert_eq!(batches.stored(), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(batches.next_request()), [6, 7, 8, 9, 10]);
    }

    #[test]
    fn only_the_message_the_hub_refuses_by_itself_is_dead_lettered() {
        let mut batches = batches(&[10; 11], 500, 1 << 20);
        let (stored, dead, requests) = drain(&mut batches, &[6]);
        assert_eq!(dead, [6]);
        assert_eq!(stored, [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]);
        // 11 → 5 ✓ + 6 → 3 ✗ → 1 ✓ + 2 ✗ → 1 ✗ (dead) + 1 ✓; then 3 ✓: a few requests, not one per message.
        assert!(requests <= 8, "{requests} requests");
    }

    #[test]
    fn several_refused_messages_are_each_dead_lettered_and_the_rest_stored() {
        let mut batches = batches(&[10; 40], 500, 1 << 20);
        let (stored, dead, _) = drain(&mut batches, &[1, 17, 18, 40]);
        assert_eq!(dead, [1, 17, 18, 40]);
        let expected: Vec<u64> = (1..=40).filter(|s| ![1, 17, 18, 40].contains(s)).collect();
        assert_eq!(stored, expected);
    }

    #[test]
    fn a_message_refused_alone_is_not_dead_lettered_until_the_caller_says_so() {
        let mut batches = batches(&[10], 500, 1 << 20);
        batches.next_request();
        assert_eq!(batches.refused(), Refusal::Alone(1));
        // The link itself turned out to be refused: it goes back to the log instead.
        batches.unreachable();
        assert!(batches.is_empty());
    }

    #[test]
    fn an_unreachable_hub_hands_everything_back_and_forgets_the_splits() {
        let mut batches = batches(&[10; 8], 500, 1 << 20);
        batches.next_request();
        batches.refused();
        batches.next_request();
        batches.unreachable();
        assert!(batches.is_empty());
        assert_eq!(batches.wants(), TAKE_AT_A_TIME);
    }

    #[test]
    fn nothing_more_is_taken_while_split_halves_wait_or_the_budget_is_full() {
        let mut full = batches(&[600_000, 600_000], 500, 1 << 20);
        assert_eq!(full.wants(), 0);
        let mut split = batches(&[10; 4], 500, 1 << 20);
        assert_eq!(split.wants(), TAKE_AT_A_TIME);
        split.next_request();
        split.refused();
        assert_eq!(split.wants(), 0);
        full.next_request();
        full.stored();
        assert_eq!(full.wants(), TAKE_AT_A_TIME);
    }

    #[test]
    fn the_next_request_is_taken_while_one_is_in_flight_and_goes_after_it_even_when_that_one_is_split(
    ) {
        let push = |batches: &mut UpstreamBatches<()>, seqs: std::ops::RangeInclusive<u64>| {
            for seq in seqs {
                batches.push(Taken {
                    seq,
                    bytes: 10,
                    item: (),
                });
            }
        };
        let mut batches = batches(&[10; 5], 5, 1 << 20);
        assert_eq!(batches.wants(), 0, "a whole request waits");
        assert_eq!(seqs(batches.next_request()), [1, 2, 3, 4, 5]);
        assert_eq!(
            batches.wants(),
            5,
            "the next request, while this one is in flight"
        );
        push(&mut batches, 6..=8);
        assert_eq!(seqs(batches.in_flight()), [1, 2, 3, 4, 5]);
        assert_eq!(batches.stored(), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(batches.next_request()), [6, 7, 8]);
        push(&mut batches, 9..=10);
        assert_eq!(batches.refused(), Refusal::Split);
        assert_eq!(seqs(batches.next_request()), [6]);
        assert_eq!(batches.wants(), 0, "nothing is taken while halves wait");
        batches.stored();
        assert_eq!(seqs(batches.next_request()), [7, 8]);
        batches.stored();
        assert_eq!(seqs(batches.next_request()), [9, 10]);
    }

    #[test]
    fn taking_stops_at_the_count_limit() {
        let batches = batches(&[10; 498], 500, 1 << 20);
        assert_eq!(batches.wants(), 2);
    }
}
