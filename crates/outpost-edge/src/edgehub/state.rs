//! The edge hub's state as a pure state machine, after `outpost_mqtt::session`: which clients are connected on
//! which connection and what they listen for, which module input endpoints the routes feed, which input
//! deliveries await their PUBACK, which direct-method calls await their answer ([`methods`]), and whether the
//! upstream link is up (while it is, every change of who listens for what is declared to the hub as presence).
//! Events go in with `now`; actions come out ([`events`]). No I/O, no clock, no locks: one task owns it
//! (`hub_loop`) and carries the actions out over the message log, the client outboxes and the callers of
//! methods.
//!
//! Each endpoint reads the log with its own cursor and has at most a window of deliveries in flight. One message
//! routed to two inputs of one module is two deliveries to the same client: the delivery id its PUBACK names
//! carries the endpoint as well as the log sequence, so that each copy is sent, de-duplicated by the MQTT
//! session and completed on its own. Layout of an input delivery id: bit 63 is clear (it marks C2D deliveries,
//! see `edgehub::C2D_DELIVERY`), bits 48–62 are the endpoint's index, bits 0–47 the log sequence. The id of
//! `(endpoint, seq)` is the same on every connection, so a resumed MQTT session that is already redelivering a
//! message recognises the re-push.
//!
//! Pacing ([`pacing`]): each stored message's sender waits for an [`Action::Admit`] before its PUBACK. It comes at
//! once unless an endpoint the message was stored for has more than a bounded backlog while its client is
//! connected and listening; then it comes when that backlog falls back to the bound, when the client leaves,
//! or after [`MAX_HOLD`] at the latest. Endpoints whose client is away store and forward without limit but the
//! log's quota.
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Instant;

use foldhash::{HashMap, HashMapExt as _};
use outpost_mqtt::Feature;

pub use events::{feature_names, Action, Delivery, Event, Handed, InputRoute, Presence};
pub use methods::{MethodCall, MethodOutcome, MAX_PENDING_METHODS};
pub use pacing::{MAX_HELD, MAX_HOLD, PACED_BACKLOG};

mod events;
mod methods;
mod pacing;

/// Unacknowledged input messages per module endpoint at a time (the module's MQTT session lets as many be in
/// flight). 256 rather than 100: an endpoint's deliveries wait on its module's PUBACKs, and at a few hundred
/// thousand messages per second 100 in flight left the daemon's CPU idle a quarter of the time.
pub const INPUT_WINDOW: usize = 256;
/// Bytes of input messages' payloads in flight per module endpoint at a time, past which it reads no more (a
/// read may pass it by its last record): the window's records are in memory until acknowledged, and 256 of
/// the largest messages (256 KiB) would be 64 MiB per endpoint.
pub const INPUT_WINDOW_BYTES: usize = 4 << 20;
/// Unacknowledged input messages per module, over all its input endpoints, which share it evenly (each at
/// most [`INPUT_WINDOW`], at least one): a module's one session holds 256 in flight and 1,000 queued, and its
/// connection's outbox takes 1,024 pushes not yet written ([`outpost_mqtt::ops::OUTBOX_CAPACITY`]), so a module
/// with many inputs, each with a backlog, must not be pushed 256 for each.
const CLIENT_WINDOW_FACTOR: usize = 3;
/// Bits of the log sequence in a delivery id.
const SEQ_BITS: u32 = 48;
/// Input endpoints a process can tell apart: 15 bits, below the C2D bit.
const MAX_ENDPOINTS: usize = 1 << 15;

/// The delivery id of `seq` of endpoint `index`, if both fit.
fn delivery_id(index: usize, seq: u64) -> Option<u64> {
    (index < MAX_ENDPOINTS && seq >> SEQ_BITS == 0).then_some(((index as u64) << SEQ_BITS) | seq)
}

/// The endpoint index and log sequence a delivery id names.
fn split_delivery_id(id: u64) -> (usize, u64) {
    // At most 15 bits after the C2D bit is masked off: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let index = ((id & !(1 << 63)) >> SEQ_BITS) as usize;
    (index, id & ((1 << SEQ_BITS) - 1))
}

/// A connected client.
#[derive(Debug, Clone, Copy)]
struct Client {
    connection: u64,
    features: u8,
}

impl Client {
    fn listens(self, feature: Feature) -> bool {
        self.features & feature.bit() != 0
    }
}

/// One module input endpoint.
#[derive(Debug)]
struct Endpoint {
    route: InputRoute,
    /// Deliveries awaiting their PUBACK.
    in_flight: usize,
    /// The most of them: the state's window, or the endpoint's share of its client's.
    window: usize,
    /// Their payloads' bytes.
    in_flight_bytes: usize,
    /// Whether the log may hold records not yet handed out.
    backlog: bool,
    /// The size of the read asked for and not yet reported (0: none).
    reading: usize,
    /// The connection it last delivered on: a new connection of its client gets everything again.
    delivered_on: Option<u64>,
    /// Records stored for it and not yet done, as far as the state knows: set from the log at each read,
    /// counted up by each message stored and down by each completion in between.
    queued: usize,
}

/// A delivery awaiting its PUBACK: the client and connection it went to, and its payload's size.
#[derive(Debug)]
struct Owner {
    client: Arc<str>,
    connection: u64,
    bytes: usize,
}

/// The edge hub's state. Bounded: one entry per live connection, at most [`MAX_ENDPOINTS`] endpoints, at most
/// `window` deliveries and `window_bytes` of payload (plus one delivery) in flight per endpoint, three windows
/// per client (shared evenly by its endpoints, at least one each), and at most
/// [`MAX_PENDING_METHODS`] method calls waiting.
#[derive(Debug)]
pub struct EdgeHubState {
    window: usize,
    window_bytes: usize,
    clients: HashMap<String, Client>,
    /// Endpoints by index (an index is never reused while the process lives: it is part of delivery ids).
    endpoints: Vec<Endpoint>,
    indexes: HashMap<Arc<str>, usize>,
    /// Delivery id → where it went.
    in_flight: HashMap<u64, Owner>,
    methods: methods::PendingMethods,
    link_up: bool,
    /// What was last declared on the link as it is now up (`None`: nothing yet).
    declared: Option<Presence>,
    /// Senders' acknowledgements held while a connected endpoint's backlog is over its bound.
    pacing: pacing::Pacing,
}

impl Default for EdgeHubState {
    fn default() -> Self {
        Self::new(INPUT_WINDOW)
    }
}

impl EdgeHubState {
    /// An empty state whose endpoints each have at most `window` deliveries in flight (and
    /// [`INPUT_WINDOW_BYTES`]).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            window_bytes: INPUT_WINDOW_BYTES,
            clients: HashMap::new(),
            endpoints: Vec::new(),
            indexes: HashMap::new(),
            in_flight: HashMap::new(),
            methods: methods::PendingMethods::new(MAX_PENDING_METHODS),
            link_up: false,
            declared: None,
            pacing: pacing::Pacing::new(PACED_BACKLOG, MAX_HELD, MAX_HOLD),
        }
    }

    /// The same state pacing senders past `backlog` records per connected endpoint, holding at most `max_held`
    /// acknowledgements for at most `max_hold`.
    #[must_use]
    pub fn with_pacing(
        mut self,
        backlog: usize,
        max_held: usize,
        max_hold: std::time::Duration,
    ) -> Self {
        self.pacing = pacing::Pacing::new(backlog, max_held, max_hold);
        self
    }

    /// The same state with at most `bytes` of payload in flight per endpoint (plus the last record of a read).
    #[must_use]
    pub fn with_window_bytes(mut self, bytes: usize) -> Self {
        self.window_bytes = bytes.max(1);
        self
    }

    /// The same state with at most `max` method calls waiting at once.
    #[must_use]
    pub fn with_max_methods(mut self, max: usize) -> Self {
        self.methods = methods::PendingMethods::new(max);
        self
    }

    /// Handles one event at `now`. Only method calls wait on the clock; nothing on the delivery side does
    /// (redelivery is by reconnect, expiry is the log's).
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let presence_may_change = matches!(
            event,
            Event::Connected { .. }
                | Event::Subscribed { .. }
                | Event::Disconnected { .. }
                | Event::LinkUp
        );
        let mut actions = self.apply(event, now);
        if presence_may_change && self.link_up {
            let current = self.presence();
            if self.declared.as_ref() != Some(&current) {
                self.declared = Some(current.clone());
                actions.push(Action::DeclarePresence(current));
            }
        }
        actions
    }

    fn apply(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::LinkUp => {
                self.link_up = true;
                Vec::new()
            }
            Event::LinkDown => {
                self.link_up = false;
                self.declared = None;
                Vec::new()
            }
            Event::Routes(routes) => self.routes(routes),
            Event::Connected {
                client,
                connection,
                features,
            } => self.connected(
                client,
                Client {
                    connection,
                    features,
                },
            ),
            Event::Subscribed {
                client,
                connection,
                features,
            } => self.subscribed(&client, connection, features),
            Event::Disconnected { client, connection } => {
                let mut actions = Vec::new();
                if self
                    .clients
                    .get(&client)
                    .is_some_and(|c| c.connection == connection)
                {
                    self.clients.remove(&client);
                    // Gone: its endpoints store and forward, their senders are no longer paced.
                    let mine: Vec<usize> = self.endpoints_of(&client).collect();
                    for index in mine {
                        self.release(index, &mut actions);
                    }
                }
                actions
            }
            Event::Stored {
                endpoints,
                admission,
            } => self.stored(endpoints, admission, now),
            Event::Read {
                endpoint,
                records,
                more,
                queued,
            } => self.read(&endpoint, records, more, queued),
            Event::Acked {
                client,
                connection,
                delivery_ids,
            } => self.acked(&client, connection, &delivery_ids),
            Event::MethodCalled(call) => vec![self.method_called(call, now)],
            Event::MethodAnswered {
                client,
                connection,
                rid,
                status,
                payload,
            } => self
                .methods
                .answer(&client, connection, &rid)
                .map(|id| Action::MethodDone {
                    id,
                    outcome: MethodOutcome::Answered { status, payload },
                })
                .into_iter()
                .collect(),
            Event::Tick => self
                .methods
                .expire(now)
                .into_iter()
                .map(|id| Action::MethodDone {
                    id,
                    outcome: MethodOutcome::TimedOut,
                })
                .chain(
                    self.pacing
                        .expire(now)
                        .into_iter()
                        .map(|admission| Action::Admit { admission }),
                )
                .collect(),
        }
    }

    /// When the next method call times out or a held acknowledgement is let go: the owner sends
    /// [`Event::Tick`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pacing = if self.pacing.len() == 0 {
            None
        } else {
            self.pacing.next_deadline()
        };
        match (self.methods.next_deadline(), pacing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many senders' acknowledgements are held.
    pub fn paced(&self) -> usize {
        self.pacing.len()
    }

    /// Who is connected and what each listens for, as the hub is told it.
    pub fn presence(&self) -> Presence {
        let mut clients: Presence = self
            .clients
            .iter()
            .map(|(id, client)| (id.clone(), feature_names(|f| client.listens(f))))
            .collect();
        clients.sort();
        clients
    }

    /// How many method calls wait for their answer.
    pub fn pending_methods(&self) -> usize {
        self.methods.len()
    }

    /// How many deliveries of an endpoint await their PUBACK.
    pub fn in_flight(&self, endpoint: &str) -> usize {
        self.indexes
            .get(endpoint)
            .map_or(0, |&i| self.endpoints[i].in_flight)
    }

    fn routes(&mut self, routes: Vec<InputRoute>) -> Vec<Action> {
        let mut actions = Vec::new();
        let added = self.endpoints.len();
        for route in routes {
            if self.indexes.contains_key(&route.endpoint) {
                continue;
            }
            if self.endpoints.len() >= MAX_ENDPOINTS {
                tracing::error!(endpoint = %route.endpoint, "too many input endpoints: this one is not delivered");
                continue;
            }
            let index = self.endpoints.len();
            self.indexes.insert(route.endpoint.clone(), index);
            // Unknown until read: the log may hold records from before a restart.
            self.endpoints.push(Endpoint {
                route,
                in_flight: 0,
                window: self.window,
                in_flight_bytes: 0,
                backlog: true,
                reading: 0,
                delivered_on: None,
                queued: 0,
            });
        }
        if self.endpoints.len() > added {
            // Each client's endpoints share its window anew (one pass to count, one to share).
            let mut inputs: HashMap<Arc<str>, usize> = HashMap::new();
            for endpoint in &self.endpoints {
                *inputs.entry(endpoint.route.client.clone()).or_default() += 1;
            }
            let client_window = self.window * CLIENT_WINDOW_FACTOR;
            for endpoint in &mut self.endpoints {
                let count = inputs.get(&endpoint.route.client).copied().unwrap_or(1);
                endpoint.window = (client_window / count).clamp(1, self.window);
            }
        }
        for index in added..self.endpoints.len() {
            self.pump(index, &mut actions);
        }
        actions
    }

    fn method_called(&mut self, call: MethodCall, now: Instant) -> Action {
        let Some(connection) = self
            .clients
            .get(&call.target)
            .filter(|c| c.listens(Feature::Methods))
            .map(|c| c.connection)
        else {
            return Action::MethodDone {
                id: call.id,
                outcome: MethodOutcome::NotListening,
            };
        };
        if let Err(outcome) = self.methods.wait(&call, connection, now) {
            return Action::MethodDone {
                id: call.id,
                outcome,
            };
        }
        Action::SendMethod {
            client: call.target,
            connection,
            rid: call.rid,
            method: call.method,
            payload: call.payload,
        }
    }

    fn connected(&mut self, client: String, state: Client) -> Vec<Action> {
        let mut actions = Vec::new();
        let connection = state.connection;
        let mine: Vec<usize> = self.endpoints_of(&client).collect();
        self.clients.insert(client, state);
        for index in mine {
            // A new connection gets everything not acknowledged on the old one again, in order.
            if self.endpoints[index]
                .delivered_on
                .is_some_and(|c| c != connection)
            {
                self.forget(index);
                actions.push(Action::Rewind {
                    endpoint: self.endpoints[index].route.endpoint.clone(),
                });
            }
            self.pump(index, &mut actions);
        }
        actions
    }

    fn subscribed(&mut self, client: &str, connection: u64, features: u8) -> Vec<Action> {
        let Some(known) = self
            .clients
            .get_mut(client)
            .filter(|c| c.connection == connection)
        else {
            return Vec::new();
        };
        known.features = features;
        let mut actions = Vec::new();
        let mine: Vec<usize> = self.endpoints_of(client).collect();
        for index in mine {
            self.release(index, &mut actions);
            self.pump(index, &mut actions);
        }
        actions
    }

    fn stored(&mut self, endpoints: Vec<Arc<str>>, admission: u64, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut indexes = Vec::with_capacity(endpoints.len());
        for name in endpoints {
            if let Some(&index) = self.indexes.get(&name) {
                let endpoint = &mut self.endpoints[index];
                endpoint.backlog = true;
                endpoint.queued += 1;
                indexes.push(index);
                self.pump(index, &mut actions);
            }
        }
        self.admit(
            pacing::Held {
                admission,
                since: now,
                endpoints: indexes,
            },
            &mut actions,
        );
        actions
    }

    /// Whether endpoint `index`'s senders wait: its client listens and its backlog is over the bound.
    fn over(&self, index: usize) -> bool {
        let endpoint = &self.endpoints[index];
        endpoint.queued > self.pacing.backlog
            && self
                .clients
                .get(&*endpoint.route.client)
                .is_some_and(|c| c.listens(Feature::Inputs))
    }

    /// Admits a stored message now, or holds it on the first of its endpoints that is over its bound.
    fn admit(&mut self, held: pacing::Held, actions: &mut Vec<Action>) {
        let admission = held.admission;
        if let Some(&index) = held.endpoints.iter().find(|&&i| self.over(i)) {
            if self.pacing.hold(held, index).is_ok() {
                return;
            }
        }
        actions.push(Action::Admit { admission });
    }

    /// Lets go what waits on endpoint `index` once it is no longer over its bound (each then waits on another
    /// of its endpoints that is, if any).
    fn release(&mut self, index: usize, actions: &mut Vec<Action>) {
        if self.over(index) {
            return;
        }
        for held in self.pacing.take(index) {
            self.admit(held, actions);
        }
    }

    fn read(&mut self, name: &str, records: Vec<Handed>, more: bool, queued: usize) -> Vec<Action> {
        let Some(&index) = self.indexes.get(name) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        let endpoint = &mut self.endpoints[index];
        endpoint.reading = 0;
        endpoint.backlog = more;
        endpoint.queued = queued;
        let target = self
            .clients
            .get(&*endpoint.route.client)
            .filter(|c| c.listens(Feature::Inputs))
            .map(|c| c.connection);
        let Some(connection) = target else {
            // Its client left or stopped listening while the read ran: the records go back, in order.
            if !records.is_empty() {
                endpoint.backlog = true;
                actions.push(Action::Rewind {
                    endpoint: endpoint.route.endpoint.clone(),
                });
            }
            return actions;
        };
        let mut deliveries = Vec::with_capacity(records.len());
        for Handed { seq, bytes } in records {
            let Some(id) = delivery_id(index, seq) else {
                tracing::error!(endpoint = %endpoint.route.endpoint, seq, "a log sequence past 2^48 cannot be delivered: dead-lettered");
                actions.push(Action::DeadLetter {
                    endpoint: endpoint.route.endpoint.clone(),
                    seq,
                });
                endpoint.queued = endpoint.queued.saturating_sub(1);
                continue;
            };
            let owner = Owner {
                client: endpoint.route.client.clone(),
                connection,
                bytes,
            };
            if self.in_flight.insert(id, owner).is_none() {
                endpoint.in_flight += 1;
                endpoint.in_flight_bytes += bytes;
            }
            endpoint.delivered_on = Some(connection);
            deliveries.push(Delivery { seq, id });
        }
        if !deliveries.is_empty() {
            actions.push(Action::Deliver {
                client: endpoint.route.client.clone(),
                connection,
                endpoint: endpoint.route.endpoint.clone(),
                input: endpoint.route.input.clone(),
                deliveries,
            });
        }
        self.release(index, &mut actions);
        self.pump(index, &mut actions);
        actions
    }

    fn acked(&mut self, client: &str, connection: u64, ids: &[u64]) -> Vec<Action> {
        let mut actions = Vec::new();
        // Each endpoint that got its window's room back, once: released and refilled after all the PUBACKs read
        // together are counted, so a batch of them asks for one read, not one per PUBACK.
        let mut touched: Vec<usize> = Vec::new();
        for &id in ids {
            // Only the connection the delivery went to completes it: a late PUBACK of an older connection, or
            // one from another client, completes nothing.
            let bytes = match self.in_flight.entry(id) {
                Entry::Occupied(owner)
                    if &*owner.get().client == client && owner.get().connection == connection =>
                {
                    owner.remove().bytes
                }
                _ => continue,
            };
            let (index, seq) = split_delivery_id(id);
            let Some(endpoint) = self.endpoints.get_mut(index) else {
                continue;
            };
            endpoint.in_flight = endpoint.in_flight.saturating_sub(1);
            endpoint.in_flight_bytes = endpoint.in_flight_bytes.saturating_sub(bytes);
            endpoint.queued = endpoint.queued.saturating_sub(1);
            actions.push(Action::Complete {
                endpoint: endpoint.route.endpoint.clone(),
                seq,
            });
            if !touched.contains(&index) {
                touched.push(index);
            }
        }
        for index in touched {
            self.release(index, &mut actions);
            // The window has room again.
            self.pump(index, &mut actions);
        }
        actions
    }

    /// Asks for a read when the endpoint may have records, its client listens, and its window has room.
    fn pump(&mut self, index: usize, actions: &mut Vec<Action>) {
        let endpoint = &self.endpoints[index];
        let listening = self
            .clients
            .get(&*endpoint.route.client)
            .is_some_and(|c| c.listens(Feature::Inputs));
        if !listening
            || !endpoint.backlog
            || endpoint.reading > 0
            || endpoint.in_flight >= endpoint.window
            || endpoint.in_flight_bytes >= self.window_bytes
        {
            return;
        }
        let max = endpoint.window - endpoint.in_flight;
        let max_bytes = self.window_bytes - endpoint.in_flight_bytes;
        let endpoint = &mut self.endpoints[index];
        endpoint.reading = max;
        actions.push(Action::Read {
            endpoint: endpoint.route.endpoint.clone(),
            topic: endpoint.route.topic.clone(),
            max,
            max_bytes,
        });
    }

    /// Forgets what endpoint `index` has in flight: its client connected again and gets it all again.
    fn forget(&mut self, index: usize) {
        self.in_flight
            .retain(|id, _| split_delivery_id(*id).0 != index);
        let endpoint = &mut self.endpoints[index];
        endpoint.in_flight = 0;
        endpoint.in_flight_bytes = 0;
        endpoint.backlog = true;
        endpoint.delivered_on = None;
    }

    fn endpoints_of<'a>(&'a self, client: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.endpoints
            .iter()
            .enumerate()
            .filter(move |(_, e)| &*e.route.client == client)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests;
