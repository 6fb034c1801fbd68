//! The state driven by events alone, over a log that lives in a few sets (what `hub_loop` does over the
//! real log and outboxes).

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::*;

const MODULE: &str = "edge/m";
/// `Feature::Inputs.bit()` and `Feature::Methods.bit()` (checked in `presence`).
const INPUTS: u8 = 2;
const METHODS: u8 = 4;

fn route(input: &str) -> InputRoute {
    InputRoute {
        endpoint: format!("{MODULE}/{input}").into(),
        client: MODULE.into(),
        input: input.into(),
        topic: format!("devices/edge/modules/m/inputs/{input}").into(),
    }
}

/// One endpoint's queue: records not yet handed out, and those handed out and not acknowledged.
#[derive(Default)]
struct Queue {
    waiting: BTreeSet<u64>,
    handed: BTreeSet<u64>,
    done: Vec<u64>,
}

/// A push to a client, as the loop sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pushed {
    connection: u64,
    input: String,
    seq: u64,
    id: u64,
}

/// The state and a log in memory; reads are carried out at once, as the loop does.
struct Hub {
    state: EdgeHubState,
    log: HashMap<Arc<str>, Queue>,
    now: Instant,
    pushed: Vec<Pushed>,
    reads: Vec<usize>,
    /// Admissions given, in order.
    admitted: Vec<u64>,
    /// The payload size of every record.
    record_bytes: usize,
}

impl Hub {
    fn new(window: usize, inputs: &[&str]) -> Self {
        let mut hub = Self {
            state: EdgeHubState::new(window),
            log: HashMap::new(),
            now: Instant::now(),
            pushed: Vec::new(),
            reads: Vec::new(),
            admitted: Vec::new(),
            record_bytes: 1,
        };
        hub.feed(Event::Routes(inputs.iter().map(|i| route(i)).collect()));
        hub
    }

    fn queue(&mut self, input: &str) -> &mut Queue {
        self.log
            .entry(Arc::from(format!("{MODULE}/{input}")))
            .or_default()
    }

    /// Stores `seq` for these inputs, as the router does, and tells the state.
    fn store(&mut self, seq: u64, inputs: &[&str]) {
        for input in inputs {
            self.queue(input).waiting.insert(seq);
        }
        let endpoints = inputs
            .iter()
            .map(|i| Arc::from(format!("{MODULE}/{i}")))
            .collect();
        self.feed(Event::Stored {
            endpoints,
            admission: seq,
        });
    }

    fn connect(&mut self, connection: u64, inputs: bool) {
        self.feed(Event::Connected {
            client: MODULE.to_owned(),
            connection,
            features: if inputs { INPUTS } else { 0 },
        });
    }

    fn ack(&mut self, connection: u64, id: u64) {
        self.feed(Event::Acked {
            client: MODULE.to_owned(),
            connection,
            delivery_ids: vec![id],
        });
    }

    /// Handles `event` and carries out every action, the reads' outcomes included.
    fn feed(&mut self, event: Event) {
        let mut work: VecDeque<Action> = self.state.handle(event, self.now).into();
        while let Some(action) = work.pop_front() {
            match action {
                Action::Read {
                    endpoint,
                    max,
                    max_bytes,
                    ..
                } => {
                    self.reads.push(max);
                    let bytes = self.record_bytes;
                    let queue = self.log.entry(endpoint.clone()).or_default();
                    // As the log hands out: while both the count and the bytes have room.
                    let mut records = Vec::new();
                    let mut room = max_bytes;
                    for &seq in queue.waiting.iter().take(max) {
                        if room == 0 {
                            break;
                        }
                        room = room.saturating_sub(bytes);
                        records.push(Handed { seq, bytes });
                    }
                    for record in &records {
                        queue.waiting.remove(&record.seq);
                        queue.handed.insert(record.seq);
                    }
                    let more = !queue.waiting.is_empty();
                    let queued = queue.waiting.len() + queue.handed.len();
                    let read = Event::Read {
                        endpoint,
                        records,
                        more,
                        queued,
                    };
                    work.extend(self.state.handle(read, self.now));
                }
                Action::Deliver {
                    client,
                    connection,
                    input,
                    deliveries,
                    ..
                } => {
                    assert_eq!(&*client, MODULE);
                    assert!(!deliveries.is_empty(), "a delivery of nothing");
                    for Delivery { seq, id } in deliveries {
                        self.pushed.push(Pushed {
                            connection,
                            input: input.to_string(),
                            seq,
                            id,
                        });
                    }
                }
                Action::Complete { endpoint, seq } | Action::DeadLetter { endpoint, seq } => {
                    let queue = self.log.get_mut(&endpoint).unwrap();
                    assert!(queue.handed.remove(&seq), "{seq} was not handed out");
                    queue.done.push(seq);
                }
                Action::Rewind { endpoint } => {
                    let queue = self.log.get_mut(&endpoint).unwrap();
                    let handed = std::mem::take(&mut queue.handed);
                    queue.waiting.extend(handed);
                }
                Action::Admit { admission } => self.admitted.push(admission),
                Action::SendMethod { .. }
                | Action::MethodDone { .. }
                | Action::DeclarePresence(_) => {
                    panic!("no method was called: {action:?}")
                }
            }
        }
    }

    fn take_pushed(&mut self) -> Vec<Pushed> {
        std::mem::take(&mut self.pushed)
    }

    fn seqs_to(pushed: &[Pushed], input: &str) -> Vec<u64> {
        pushed
            .iter()
            .filter(|p| p.input == input)
            .map(|p| p.seq)
            .collect()
    }
}

#[test]
fn one_message_routed_to_two_inputs_of_one_module_reaches_both_exactly_once_in_order() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1", "in2"]);
    hub.connect(1, true);
    for seq in 1..=3 {
        hub.store(seq, &["in1", "in2"]);
    }
    let pushed = hub.take_pushed();
    assert_eq!(Hub::seqs_to(&pushed, "in1"), [1, 2, 3]);
    assert_eq!(Hub::seqs_to(&pushed, "in2"), [1, 2, 3]);
    let ids: BTreeSet<u64> = pushed.iter().map(|p| p.id).collect();
    assert_eq!(ids.len(), 6, "each copy has its own delivery id");
    for p in &pushed {
        hub.ack(1, p.id);
    }
    assert_eq!(hub.queue("in1").done, [1, 2, 3]);
    assert_eq!(hub.queue("in2").done, [1, 2, 3]);
    // Acked twice, or stored again for another endpoint: nothing goes out again.
    for p in &pushed {
        hub.ack(1, p.id);
    }
    hub.store(4, &["in1"]);
    assert_eq!(
        hub.take_pushed(),
        [Pushed {
            connection: 1,
            input: "in1".into(),
            seq: 4,
            id: delivery_id(0, 4).unwrap()
        }]
    );
    assert_eq!(hub.state.in_flight("edge/m/in2"), 0);
}

#[test]
fn each_ack_of_a_message_sent_to_two_inputs_completes_only_its_own_copy() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1", "in2"]);
    hub.connect(1, true);
    hub.store(7, &["in1", "in2"]);
    let pushed = hub.take_pushed();
    let second = pushed.iter().find(|p| p.input == "in2").unwrap().id;
    hub.ack(1, second);
    assert_eq!(hub.queue("in2").done, [7]);
    assert!(hub.queue("in1").done.is_empty());
    assert_eq!(hub.state.in_flight("edge/m/in1"), 1);
    assert_eq!(hub.state.in_flight("edge/m/in2"), 0);
}

#[test]
fn a_disconnected_clients_in_flight_messages_are_redelivered_in_order_on_reconnect() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1"]);
    hub.connect(1, true);
    for seq in 1..=4 {
        hub.store(seq, &["in1"]);
    }
    let first = hub.take_pushed();
    hub.ack(1, first[0].id);
    hub.feed(Event::Disconnected {
        client: MODULE.into(),
        connection: 1,
    });
    // Stored while it is away: kept for it.
    hub.store(5, &["in1"]);
    assert!(hub.take_pushed().is_empty());

    hub.connect(2, true);
    let again = hub.take_pushed();
    assert_eq!(Hub::seqs_to(&again, "in1"), [2, 3, 4, 5]);
    assert!(again.iter().all(|p| p.connection == 2));
    // The same ids as before, so a resumed MQTT session drops a re-push of what it already redelivers.
    assert_eq!(again[0].id, first[1].id);
    for p in &again {
        hub.ack(2, p.id);
    }
    assert_eq!(hub.queue("in1").done, [1, 2, 3, 4, 5]);
}

#[test]
fn the_window_bounds_what_is_in_flight_per_endpoint() {
    let mut hub = Hub::new(3, &["in1", "in2"]);
    hub.connect(1, true);
    for seq in 1..=5 {
        hub.store(seq, &["in1", "in2"]);
    }
    let pushed = hub.take_pushed();
    assert_eq!(Hub::seqs_to(&pushed, "in1"), [1, 2, 3]);
    assert_eq!(
        Hub::seqs_to(&pushed, "in2"),
        [1, 2, 3],
        "one endpoint's window does not hold back another's"
    );
    assert_eq!(hub.state.in_flight("edge/m/in1"), 3);
    assert!(hub.reads.iter().all(|max| *max <= 3));

    let first = pushed.iter().find(|p| p.input == "in1").unwrap().id;
    hub.ack(1, first);
    assert_eq!(Hub::seqs_to(&hub.take_pushed(), "in1"), [4]);
    assert_eq!(hub.state.in_flight("edge/m/in1"), 3);
}

#[test]
fn the_window_bounds_the_bytes_in_flight_per_endpoint_too() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1"]);
    hub.state = EdgeHubState::new(INPUT_WINDOW).with_window_bytes(1000);
    hub.feed(Event::Routes(vec![route("in1")]));
    hub.record_bytes = 300;
    hub.connect(1, true);
    for seq in 1..=10 {
        hub.store(seq, &["in1"]);
    }
    let pushed = hub.take_pushed();
    // 300 + 300 + 300 leaves 100: a fourth goes, and then the bytes, not the count, hold the rest.
    assert_eq!(Hub::seqs_to(&pushed, "in1"), [1, 2, 3, 4]);
    assert_eq!(hub.state.in_flight("edge/m/in1"), 4);
    hub.ack(1, pushed[0].id);
    assert_eq!(
        Hub::seqs_to(&hub.take_pushed(), "in1"),
        [5],
        "900 bytes in flight: 100 of room, filled by one record"
    );
    hub.feed(Event::Acked {
        client: MODULE.to_owned(),
        connection: 1,
        delivery_ids: vec![pushed[1].id, pushed[2].id],
    });
    assert_eq!(Hub::seqs_to(&hub.take_pushed(), "in1"), [6, 7]);
    assert_eq!(hub.state.in_flight("edge/m/in1"), 4);
    assert!(
        hub.reads.iter().all(|max| *max <= INPUT_WINDOW),
        "the count never held them back"
    );
}

#[test]
fn a_module_with_many_inputs_shares_three_windows_among_them() {
    let inputs = ["in1", "in2", "in3", "in4", "in5"];
    let mut hub = Hub::new(INPUT_WINDOW, &inputs);
    hub.connect(1, true);
    for seq in 1..=300 {
        hub.store(seq, &inputs);
    }
    let pushed = hub.take_pushed();
    // 768 / 5: what one module's session and outbox take at once is bounded however many inputs it has.
    for input in inputs {
        assert_eq!(
            Hub::seqs_to(&pushed, input),
            (1..=153).collect::<Vec<u64>>()
        );
    }
    assert!(pushed.len() <= 3 * INPUT_WINDOW);
    let first = pushed.iter().find(|p| p.input == "in5").unwrap().id;
    hub.ack(1, first);
    assert_eq!(Hub::seqs_to(&hub.take_pushed(), "in5"), [154]);

    let mut few = Hub::new(INPUT_WINDOW, &["in1", "in2"]);
    few.connect(1, true);
    for seq in 1..=300 {
        few.store(seq, &["in1", "in2"]);
    }
    assert_eq!(
        Hub::seqs_to(&few.take_pushed(), "in2").len(),
        INPUT_WINDOW,
        "up to three inputs each have a whole window"
    );
}

#[test]
fn an_ack_from_another_connection_of_the_same_client_completes_nothing() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1"]);
    hub.connect(1, true);
    hub.store(1, &["in1"]);
    hub.connect(2, true);
    let pushed = hub.take_pushed();
    let on_two = pushed.iter().find(|p| p.connection == 2).unwrap().id;
    // A late PUBACK of the first connection.
    hub.ack(1, on_two);
    assert!(hub.queue("in1").done.is_empty());
    assert_eq!(hub.state.in_flight("edge/m/in1"), 1);
    hub.ack(2, on_two);
    assert_eq!(hub.queue("in1").done, [1]);
}

#[test]
fn pubacks_read_together_complete_each_delivery_and_refill_the_window_with_one_read() {
    let mut hub = Hub::new(3, &["in1"]);
    hub.connect(1, true);
    for seq in 1..=8 {
        hub.store(seq, &["in1"]);
    }
    let pushed = hub.take_pushed();
    assert_eq!(Hub::seqs_to(&pushed, "in1"), [1, 2, 3]);
    hub.reads.clear();
    // Two of the three, and one that is not in flight (acknowledged twice): nothing for the last.
    let ids = vec![pushed[0].id, pushed[1].id, pushed[0].id];
    hub.feed(Event::Acked {
        client: MODULE.to_owned(),
        connection: 1,
        delivery_ids: ids,
    });
    assert_eq!(hub.queue("in1").done, [1, 2]);
    assert_eq!(hub.reads, [2], "one read for the room the two made");
    assert_eq!(Hub::seqs_to(&hub.take_pushed(), "in1"), [4, 5]);
    assert_eq!(hub.state.in_flight("edge/m/in1"), 3);
}

#[test]
fn an_ack_from_another_client_completes_nothing() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1"]);
    hub.connect(1, true);
    hub.store(1, &["in1"]);
    let id = hub.take_pushed()[0].id;
    hub.feed(Event::Acked {
        client: "edge/other".into(),
        connection: 1,
        delivery_ids: vec![id],
    });
    assert!(hub.queue("in1").done.is_empty());
    assert_eq!(hub.state.in_flight("edge/m/in1"), 1);
}

#[test]
fn nothing_is_read_until_the_module_listens_for_inputs() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1"]);
    hub.store(1, &["in1"]);
    hub.connect(1, false);
    assert!(hub.reads.is_empty());
    // A change made on an older connection counts for nothing.
    hub.feed(Event::Subscribed {
        client: MODULE.into(),
        connection: 0,
        features: INPUTS,
    });
    assert!(hub.reads.is_empty());
    hub.feed(Event::Subscribed {
        client: MODULE.into(),
        connection: 1,
        features: INPUTS,
    });
    assert_eq!(Hub::seqs_to(&hub.take_pushed(), "in1"), [1]);
}

#[test]
fn records_read_after_the_client_left_go_back_in_order() {
    let mut state = EdgeHubState::new(10);
    let now = Instant::now();
    state.handle(Event::Routes(vec![route("in1")]), now);
    let reads = state.handle(
        Event::Connected {
            client: MODULE.into(),
            connection: 1,
            features: INPUTS,
        },
        now,
    );
    assert_eq!(
        reads,
        [Action::Read {
            endpoint: "edge/m/in1".into(),
            topic: "devices/edge/modules/m/inputs/in1".into(),
            max: 10,
            max_bytes: INPUT_WINDOW_BYTES,
        }]
    );
    state.handle(
        Event::Disconnected {
            client: MODULE.into(),
            connection: 1,
        },
        now,
    );
    let actions = state.handle(
        Event::Read {
            endpoint: "edge/m/in1".into(),
            records: vec![Handed { seq: 1, bytes: 1 }, Handed { seq: 2, bytes: 1 }],
            more: false,
            queued: 2,
        },
        now,
    );
    assert_eq!(
        actions,
        [Action::Rewind {
            endpoint: "edge/m/in1".into()
        }]
    );
    assert_eq!(state.in_flight("edge/m/in1"), 0);
}

#[test]
fn the_disconnect_of_an_older_connection_keeps_the_newer_one() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1"]);
    hub.connect(1, true);
    hub.connect(2, true);
    hub.feed(Event::Disconnected {
        client: MODULE.into(),
        connection: 1,
    });
    hub.store(1, &["in1"]);
    let pushed = hub.take_pushed();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].connection, 2);
}

#[test]
fn a_message_stored_for_an_endpoint_no_route_feeds_is_ignored() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1"]);
    hub.connect(1, true);
    hub.feed(Event::Stored {
        endpoints: vec!["$upstream".into()],
        admission: 1,
    });
    assert!(hub.take_pushed().is_empty());
}

#[test]
fn a_route_added_later_delivers_what_the_log_already_holds() {
    let mut hub = Hub::new(INPUT_WINDOW, &[]);
    hub.connect(1, true);
    hub.queue("in1").waiting.extend([1, 2]);
    hub.feed(Event::Routes(vec![route("in1")]));
    assert_eq!(Hub::seqs_to(&hub.take_pushed(), "in1"), [1, 2]);
}

#[test]
fn a_sequence_past_the_delivery_id_range_is_dead_lettered_not_delivered() {
    let mut hub = Hub::new(INPUT_WINDOW, &["in1"]);
    hub.connect(1, true);
    hub.store(1 << SEQ_BITS, &["in1"]);
    assert!(hub.take_pushed().is_empty());
    assert_eq!(hub.queue("in1").done, [1 << SEQ_BITS]);
    assert_eq!(hub.state.in_flight("edge/m/in1"), 0);
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
fn endpoints_keep_their_index_and_are_bounded() {
    let mut state = EdgeHubState::default();
    let now = Instant::now();
    let routes = (0..=MAX_ENDPOINTS)
        .map(|n| InputRoute {
            endpoint: format!("edge/m{n}/in").into(),
            client: format!("edge/m{n}").into(),
            input: "in".into(),
            topic: format!("devices/edge/modules/m{n}/inputs/in").into(),
        })
        .collect();
    state.handle(Event::Routes(routes), now);
    assert_eq!(state.endpoints.len(), MAX_ENDPOINTS);
    assert_eq!(state.indexes[&Arc::from("edge/m5/in")], 5);
    state.handle(Event::Routes(vec![route("in1")]), now);
    assert_eq!(state.endpoints.len(), MAX_ENDPOINTS, "one too many");
}

mod methods;
mod pacing;
mod presence;
