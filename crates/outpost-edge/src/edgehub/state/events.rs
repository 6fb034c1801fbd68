//! What goes into the edge hub's state machine and what comes out: its events, its actions, and the data they
//! carry.

use std::sync::Arc;

use outpost_mqtt::Feature;

use super::{MethodCall, MethodOutcome};

/// A module input a route feeds: its endpoint in the log, and the client and input it is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRoute {
    /// The endpoint's name in the log (`{device}/{module}/{input}`).
    pub endpoint: Arc<str>,
    /// The module's client id (`{device}/{module}`): shared, as every delivery and its entry in flight name it.
    pub client: Arc<str>,
    /// The input's name (shared: every delivery names it).
    pub input: Arc<str>,
    /// The topic of the input's messages before their property bag
    /// (`devices/{device}/modules/{module}/inputs/{input}`, [`outpost_mqtt::topic::input_prefix`]).
    pub topic: Arc<str>,
}

/// What happened, as the edge hub's state machine learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The routes in force feed these inputs. Endpoints are added, never forgotten: what was stored for an input
    /// whose route left still goes out.
    Routes(Vec<InputRoute>),
    /// A client connected.
    Connected {
        /// Client id.
        client: String,
        /// The connection, as the MQTT head numbers them.
        connection: u64,
        /// What its (resumed) session listens for: [`Feature`] bits.
        features: u8,
    },
    /// A client's subscriptions changed.
    Subscribed {
        /// Client id.
        client: String,
        /// The connection the change was made on.
        connection: u64,
        /// What it listens for now: [`Feature`] bits.
        features: u8,
    },
    /// The upstream link to the hub is up.
    LinkUp,
    /// The upstream link to the hub is down.
    LinkDown,
    /// A connection ended.
    Disconnected {
        /// Client id.
        client: String,
        /// The connection that ended.
        connection: u64,
    },
    /// A message was stored durably in the log for these endpoints; its sender's acknowledgement waits for
    /// [`Action::Admit`] of `admission`.
    Stored {
        /// The endpoints it was stored for.
        endpoints: Vec<Arc<str>>,
        /// The owner's number for the sender waiting (unique among those waiting).
        admission: u64,
    },
    /// The outcome of an [`Action::Read`]: the records handed out (in delivery order), and whether the
    /// endpoint has more to hand out.
    Read {
        /// The endpoint read.
        endpoint: Arc<str>,
        /// The records handed out.
        records: Vec<Handed>,
        /// Whether more wait.
        more: bool,
        /// Records of the endpoint not yet done in the log (handed out or not).
        queued: usize,
    },
    /// A client PUBACKed input deliveries on a connection (the PUBACKs read together, in order).
    Acked {
        /// Client id.
        client: String,
        /// The connection the PUBACKs came on.
        connection: u64,
        /// The delivery ids they name.
        delivery_ids: Vec<u64>,
    },
    /// A direct method is called on a client of the edge hub (from the method API, or forwarded by the hub).
    MethodCalled(MethodCall),
    /// A client answered a direct method on a connection.
    MethodAnswered {
        /// Client id.
        client: String,
        /// The connection the answer came on.
        connection: u64,
        /// The request id it answers.
        rid: String,
        /// The status it chose.
        status: i32,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// Time passed: calls whose deadline is past end ([`EdgeHubState::next_deadline`](super::EdgeHubState::next_deadline) says when to send it).
    Tick,
}

/// A record of an endpoint handed out by a read: its log sequence and the size of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handed {
    /// Its log sequence.
    pub seq: u64,
    /// Its payload's length.
    pub bytes: usize,
}

/// A record of an endpoint pushed to its client: its log sequence and the id its PUBACK will name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Its log sequence.
    pub seq: u64,
    /// Its delivery id.
    pub id: u64,
}

/// What the owner of the state must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hand out up to `max` records of the endpoint's log queue, and no more once their payloads reach
    /// `max_bytes` (the last one may pass it), then report them as [`Event::Read`].
    Read {
        /// The endpoint.
        endpoint: Arc<str>,
        /// Its input's topic before the property bag ([`InputRoute::topic`]).
        topic: Arc<str>,
        /// How many at most.
        max: usize,
        /// The payloads' bytes at which the read stops.
        max_bytes: usize,
    },
    /// Push records handed out by one read to a client's input, in order, each with its delivery id: one
    /// action for the read, not one per record.
    Deliver {
        /// Client id.
        client: Arc<str>,
        /// The connection to push them on.
        connection: u64,
        /// The endpoint the records were read from.
        endpoint: Arc<str>,
        /// The input they go to.
        input: Arc<str>,
        /// The records, in the order read.
        deliveries: Vec<Delivery>,
    },
    /// The endpoint's copy of the record is delivered: acknowledge it in the log.
    Complete {
        /// The endpoint.
        endpoint: Arc<str>,
        /// Its log sequence.
        seq: u64,
    },
    /// The record cannot be delivered (its sequence does not fit a delivery id): dead-letter it.
    DeadLetter {
        /// The endpoint.
        endpoint: Arc<str>,
        /// Its log sequence.
        seq: u64,
    },
    /// Make every record of the endpoint handed out and not acknowledged deliverable again, in order.
    Rewind {
        /// The endpoint.
        endpoint: Arc<str>,
    },
    /// Push a direct-method request to a client.
    SendMethod {
        /// Client id.
        client: String,
        /// The connection to push it on (only an answer on this one counts).
        connection: u64,
        /// The request id.
        rid: String,
        /// The method's name.
        method: String,
        /// The request's payload.
        payload: Vec<u8>,
    },
    /// A method call ended: tell its caller.
    MethodDone {
        /// The call's [`MethodCall::id`].
        id: u64,
        /// How it ended.
        outcome: MethodOutcome,
    },
    /// The sender of a stored message may have its acknowledgement now.
    Admit {
        /// The [`Event::Stored`] admission.
        admission: u64,
    },
    /// Declare to the hub who is connected here and what each listens for (the link is up, and this changed
    /// since the last declaration on it).
    DeclarePresence(Presence),
}

/// Connected clients by id, each with what it listens for (`desired`, `methods`, `c2d`, `inputs`), sorted.
pub type Presence = Vec<(String, Vec<&'static str>)>;

/// The presence names of the features a client listens for, in the order the hub is told them.
pub fn feature_names(listens: impl Fn(Feature) -> bool) -> Vec<&'static str> {
    [
        (Feature::DesiredPatches, "desired"),
        (Feature::Methods, "methods"),
        (Feature::CloudToDevice, "c2d"),
        (Feature::Inputs, "inputs"),
    ]
    .into_iter()
    .filter(|(f, _)| listens(*f))
    .map(|(_, name)| name)
    .collect()
}
