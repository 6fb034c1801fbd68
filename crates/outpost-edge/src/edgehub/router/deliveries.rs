//! Input deliveries in flight. One message routed to two inputs of one module is two deliveries to the same
//! client: the delivery id its PUBACK names carries the endpoint as well as the log sequence, so that each copy
//! is sent, de-duplicated by the MQTT session and completed on its own.
//!
//! Layout of an input delivery id: bit 63 is clear (it marks C2D deliveries, see `edgehub::C2D_DELIVERY`),
//! bits 48–62 are the endpoint's index, bits 0–47 the log sequence. The id of `(endpoint, seq)` is the same on
//! every connection, so a resumed MQTT session that is already redelivering a message recognises the re-push.

use std::collections::HashMap;

/// Bits of the log sequence in a delivery id.
const SEQ_BITS: u32 = 48;
/// Input endpoints a process can tell apart: 15 bits, below the C2D bit.
const MAX_ENDPOINTS: usize = 1 << 15;

/// The delivery id of `seq` of endpoint `index`, if both fit.
pub fn delivery_id(index: usize, seq: u64) -> Option<u64> {
    (index < MAX_ENDPOINTS && seq >> SEQ_BITS == 0).then_some(((index as u64) << SEQ_BITS) | seq)
}

/// The endpoint index and log sequence a delivery id names.
pub fn split_delivery_id(id: u64) -> (usize, u64) {
    // At most 15 bits after the C2D bit is masked off: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let index = ((id & !(1 << 63)) >> SEQ_BITS) as usize;
    (index, id & ((1 << SEQ_BITS) - 1))
}

/// Which input deliveries await their PUBACK, per endpoint. The caller keeps each endpoint under its window,
/// so this holds at most `window × endpoints` entries; endpoints past [`MAX_ENDPOINTS`] are not delivered.
#[derive(Default)]
pub struct InputDeliveries {
    /// Endpoint names by index (an index is never reused while the process lives).
    endpoints: Vec<String>,
    indexes: HashMap<String, usize>,
    /// Delivery id → the client it went to.
    in_flight: HashMap<u64, String>,
    /// In-flight deliveries per endpoint index.
    counts: HashMap<usize, usize>,
}

impl InputDeliveries {
    /// The index of endpoint `name`, assigned on first use; `None` once [`MAX_ENDPOINTS`] are taken.
    pub fn index(&mut self, name: &str) -> Option<usize> {
        if let Some(index) = self.indexes.get(name) {
            return Some(*index);
        }
        if self.endpoints.len() >= MAX_ENDPOINTS {
            return None;
        }
        let index = self.endpoints.len();
        self.endpoints.push(name.to_owned());
        self.indexes.insert(name.to_owned(), index);
        Some(index)
    }

    /// Records `seq` of endpoint `index` as sent to `client`; returns the delivery id to send it with.
    pub fn sent(&mut self, client: &str, index: usize, seq: u64) -> Option<u64> {
        let id = delivery_id(index, seq)?;
        if self.in_flight.insert(id, client.to_owned()).is_none() {
            *self.counts.entry(index).or_default() += 1;
        }
        Some(id)
    }

    /// `client` acknowledged delivery `id`: the endpoint and sequence it completes, if it was in flight to
    /// that client (an ack from anyone else, or a second ack, completes nothing).
    pub fn acked(&mut self, client: &str, id: u64) -> Option<(&str, u64)> {
        if self.in_flight.get(&id).map(String::as_str) != Some(client) {
            return None;
        }
        self.in_flight.remove(&id);
        let (index, seq) = split_delivery_id(id);
        if let Some(count) = self.counts.get_mut(&index) {
            *count = count.saturating_sub(1);
        }
        Some((self.endpoints.get(index)?.as_str(), seq))
    }

    /// Forgets what endpoint `index` has in flight: its client connected again and gets it all again.
    pub fn forget(&mut self, index: usize) {
        self.in_flight
            .retain(|id, _| split_delivery_id(*id).0 != index);
        self.counts.insert(index, 0);
    }

    /// How many deliveries of endpoint `index` await their PUBACK.
    pub fn in_flight(&self, index: usize) -> usize {
        self.counts.get(&index).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "edge/m";

    fn two_inputs() -> (InputDeliveries, usize, usize) {
        let mut deliveries = InputDeliveries::default();
        let a = deliveries.index("edge/m/in1").unwrap();
        let b = deliveries.index("edge/m/in2").unwrap();
        (deliveries, a, b)
    }

    #[test]
    fn one_message_sent_to_two_inputs_of_one_module_gets_two_delivery_ids() {
        let (mut deliveries, a, b) = two_inputs();
        let first = deliveries.sent(CLIENT, a, 7).unwrap();
        let second = deliveries.sent(CLIENT, b, 7).unwrap();
        assert_ne!(first, second);
        assert_eq!(deliveries.in_flight(a), 1);
        assert_eq!(deliveries.in_flight(b), 1);
    }

    #[test]
    fn each_ack_completes_its_own_copy_and_only_once() {
        let (mut deliveries, a, b) = two_inputs();
        let first = deliveries.sent(CLIENT, a, 7).unwrap();
        let second = deliveries.sent(CLIENT, b, 7).unwrap();
        assert_eq!(deliveries.acked(CLIENT, second), Some(("edge/m/in2", 7)));
        assert_eq!(deliveries.in_flight(a), 1);
        assert_eq!(deliveries.in_flight(b), 0);
        assert_eq!(deliveries.acked(CLIENT, second), None);
        assert_eq!(deliveries.acked(CLIENT, first), Some(("edge/m/in1", 7)));
        assert_eq!(deliveries.in_flight(a), 0);
    }

    #[test]
    fn an_ack_from_another_client_completes_nothing() {
        let (mut deliveries, a, _) = two_inputs();
        let id = deliveries.sent(CLIENT, a, 1).unwrap();
        assert_eq!(deliveries.acked("edge/other", id), None);
        assert_eq!(deliveries.in_flight(a), 1);
    }

    #[test]
    fn a_delivery_id_is_the_same_on_every_connection_so_a_resumed_session_drops_the_re_push() {
        let (mut deliveries, a, _) = two_inputs();
        let before = deliveries.sent(CLIENT, a, 3).unwrap();
        deliveries.forget(a);
        assert_eq!(deliveries.in_flight(a), 0);
        assert_eq!(deliveries.acked(CLIENT, before), None, "forgotten");
        let again = deliveries.sent(CLIENT, a, 3).unwrap();
        assert_eq!(before, again);
        assert_eq!(deliveries.in_flight(a), 1);
    }

    #[test]
    fn sending_the_same_delivery_twice_counts_it_once() {
        let (mut deliveries, a, _) = two_inputs();
        deliveries.sent(CLIENT, a, 3).unwrap();
        deliveries.sent(CLIENT, a, 3).unwrap();
        assert_eq!(deliveries.in_flight(a), 1);
    }

    #[test]
    fn forgetting_one_input_keeps_the_other_inputs_deliveries() {
        let (mut deliveries, a, b) = two_inputs();
        deliveries.sent(CLIENT, a, 1).unwrap();
        let kept = deliveries.sent(CLIENT, b, 1).unwrap();
        deliveries.forget(a);
        assert_eq!(deliveries.acked(CLIENT, kept), Some(("edge/m/in2", 1)));
    }

    #[test]
    fn input_delivery_ids_never_carry_the_c2d_bit_and_split_back() {
        let id = delivery_id(MAX_ENDPOINTS - 1, (1 << SEQ_BITS) - 1).unwrap();
        assert_eq!(id & (1 << 63), 0);
        assert_eq!(
            split_delivery_id(id),
            (MAX_ENDPOINTS - 1, (1 << SEQ_BITS) - 1)
        );
        assert_eq!(delivery_id(MAX_ENDPOINTS, 1), None);
        assert_eq!(delivery_id(0, 1 << SEQ_BITS), None);
    }

    #[test]
    fn an_endpoint_keeps_its_index_and_indexes_are_bounded() {
        let mut deliveries = InputDeliveries::default();
        for n in 0..MAX_ENDPOINTS {
            assert_eq!(deliveries.index(&format!("e{n}")), Some(n));
        }
        assert_eq!(deliveries.index("e5"), Some(5));
        assert_eq!(deliveries.index("one too many"), None);
    }
}
