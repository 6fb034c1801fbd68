//! The task that owns the edge hub's [`EdgeHubState`]: the MQTT head, the router, the route refresh and the
//! callers of direct methods (the method API, calls forwarded from the hub) send it events over one bounded
//! channel; it hands each to the state and carries out the actions over the drivers around it: the log's
//! endpoint queues, the client outboxes, and the callers' answer channels. Nothing else touches that state, so
//! it needs no lock. It waits on its channel, and on a timer only while a method call waits for its deadline.
//!
//! The task never waits on anything else (log reads are short `pread`s, pushes go to an outbox with
//! `try_send`, answers to a `oneshot`), so a sender blocked on a full channel always sees it drained.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt as _};
use outpost_mqtt::{Feature, Outbox, Outgoing};
use outpost_store::log::{EndpointQueue, MessageLog};
use tokio::sync::{mpsc, oneshot, watch};

use super::state::{
    Action, Delivery, EdgeHubState, Event, Handed, InputRoute, MethodCall, MethodOutcome, Presence,
};
use super::stored::ForInput;
use crate::metrics::EdgeMetrics;

/// Events waiting for the task at most; a sender past this waits its turn.
const EVENTS_CAPACITY: usize = 1024;

/// What the task receives: an event of the state, or a change of the outboxes it pushes through.
enum Input {
    Event(Event),
    Connected {
        client: String,
        outbox: Outbox,
    },
    Subscribed {
        client: String,
    },
    /// A message is durable for these endpoints; `admitted` is told when its sender may have its PUBACK.
    Stored {
        endpoints: Vec<Arc<str>>,
        admitted: oneshot::Sender<()>,
    },
    /// A method call (its `id` is set by the task) and where its outcome goes.
    Method {
        call: MethodCall,
        reply: oneshot::Sender<MethodOutcome>,
    },
    /// A method call's deadline passed.
    Tick,
}

/// The sending end of the task that owns the edge hub's state; the task ends when every copy is dropped.
#[derive(Clone)]
pub struct HubLoop {
    events: mpsc::Sender<Input>,
    presence: watch::Receiver<Option<Presence>>,
}

/// The [`Feature`] bits an outbox's connection listens for.
fn features(outbox: &Outbox) -> u8 {
    [
        Feature::CloudToDevice,
        Feature::Inputs,
        Feature::Methods,
        Feature::DesiredPatches,
    ]
    .into_iter()
    .filter(|f| outbox.subscribed(*f))
    .fold(0, |bits, f| bits | f.bit())
}

impl HubLoop {
    /// Starts the task over the message log (which it reads endpoint by endpoint).
    pub fn start(log: MessageLog, metrics: EdgeMetrics) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start_with(log, metrics, EdgeHubState::default())
    }

    /// [`HubLoop::start`] over a state set up by the caller (its window and pacing).
    pub fn start_with(
        log: MessageLog,
        metrics: EdgeMetrics,
        state: EdgeHubState,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (events, receiver) = mpsc::channel(EVENTS_CAPACITY);
        let (declare, presence) = watch::channel(None);
        let drivers = Drivers {
            declare,
            log,
            metrics,
            queues: HashMap::new(),
            outboxes: HashMap::new(),
            fetched: HashMap::new(),
            callers: HashMap::new(),
            next_call: 0,
            admissions: HashMap::new(),
            next_admission: 0,
        };
        let task = tokio::spawn(run(receiver, state, drivers));
        (Self { events, presence }, task)
    }

    /// The presence to declare to the hub: the latest only, changed each time the link comes up and each time
    /// who listens for what changes while it is up.
    pub fn presence(&self) -> watch::Receiver<Option<Presence>> {
        self.presence.clone()
    }

    /// The upstream link came up or went down.
    pub async fn link(&self, up: bool) {
        let event = if up { Event::LinkUp } else { Event::LinkDown };
        self.send(Input::Event(event)).await;
    }

    async fn send(&self, input: Input) {
        // Gone only while the process ends.
        let _ = self.events.send(input).await;
    }

    /// The routes in force feed these inputs.
    pub async fn routes(&self, routes: Vec<InputRoute>) {
        self.send(Input::Event(Event::Routes(routes))).await;
    }

    /// A client connected; its outbox tells its connection and whether it listens for inputs.
    pub async fn connected(&self, client: String, outbox: Outbox) {
        self.send(Input::Connected { client, outbox }).await;
    }

    /// A client's subscriptions changed (its outbox holds the new set).
    pub async fn subscribed(&self, client: String) {
        self.send(Input::Subscribed { client }).await;
    }

    /// A connection ended.
    pub async fn disconnected(&self, client: String, connection: u64) {
        self.send(Input::Event(Event::Disconnected { client, connection }))
            .await;
    }

    /// A message is durable in the log for these endpoints; returns when its sender may have its PUBACK (at
    /// once, unless a connected endpoint among them is too far behind: see the state's pacing).
    pub async fn stored(&self, endpoints: Vec<Arc<str>>) {
        if !endpoints.is_empty() {
            let (admitted, admission) = oneshot::channel();
            self.send(Input::Stored {
                endpoints,
                admitted,
            })
            .await;
            // Dropped only while the process ends.
            let _ = admission.await;
        }
    }

    /// Calls `method` on client `target` under request id `rid` and waits for its outcome: the answer, or why
    /// there is none (not listening, too many calls waiting, no answer within `timeout`).
    pub async fn call_method(
        &self,
        target: String,
        rid: String,
        method: String,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> MethodOutcome {
        let (reply, outcome) = oneshot::channel();
        let call = MethodCall {
            id: 0,
            rid,
            target,
            method,
            payload,
            timeout,
        };
        self.send(Input::Method { call, reply }).await;
        outcome.await.unwrap_or(MethodOutcome::TimedOut)
    }

    /// A client answered a direct method on `connection`.
    pub async fn method_answered(
        &self,
        client: String,
        connection: u64,
        rid: String,
        status: i32,
        payload: Vec<u8>,
    ) {
        self.send(Input::Event(Event::MethodAnswered {
            client,
            connection,
            rid,
            status,
            payload,
        }))
        .await;
    }

    /// A client PUBACKed input deliveries on `connection` (those read together, in order).
    pub async fn acked(&self, client: String, connection: u64, delivery_ids: Vec<u64>) {
        self.send(Input::Event(Event::Acked {
            client,
            connection,
            delivery_ids,
        }))
        .await;
    }
}

async fn run(mut receiver: mpsc::Receiver<Input>, mut state: EdgeHubState, mut drivers: Drivers) {
    loop {
        let input = match state.next_deadline() {
            Some(deadline) => tokio::select! {
                input = receiver.recv() => input,
                () = tokio::time::sleep_until(deadline.into()) => Some(Input::Tick),
            },
            None => receiver.recv().await,
        };
        let Some(input) = input else {
            return;
        };
        let Some(event) = drivers.event(input) else {
            continue;
        };
        tracing::trace!(?event, "hub loop event");
        let actions = state.handle(event, Instant::now());
        tracing::trace!(?actions, "hub loop actions");
        drivers.carry_out(&mut state, actions);
    }
}

/// What the state's actions are carried out with.
struct Drivers {
    /// Where presence declarations go (the link's presence loop sends them).
    declare: watch::Sender<Option<Presence>>,
    log: MessageLog,
    metrics: EdgeMetrics,
    /// The log's queue of each endpoint the state named.
    queues: HashMap<Arc<str>, EndpointQueue>,
    /// The outbox of each connected client (one per client: the newest connection's).
    outboxes: HashMap<String, Outbox>,
    /// Records read and not yet pushed, by endpoint, in the order read, for the actions of the read's outcome
    /// (an endpoint has one read at a time).
    fetched: HashMap<Arc<str>, Vec<(u64, ForInput)>>,
    /// Where the outcome of each method call goes, by call id (as many as the state lets wait, and each
    /// taken out when the state ends its call).
    callers: HashMap<u64, oneshot::Sender<MethodOutcome>>,
    next_call: u64,
    /// The senders of stored messages waiting for their admission, by admission number (as many as the state
    /// holds, and each taken out when it admits).
    admissions: HashMap<u64, oneshot::Sender<()>>,
    next_admission: u64,
}

impl Drivers {
    /// Turns an input into the state's event, keeping the outboxes in step.
    fn event(&mut self, input: Input) -> Option<Event> {
        match input {
            Input::Event(event) => {
                if let Event::Disconnected { client, connection } = &event {
                    if self
                        .outboxes
                        .get(client)
                        .is_some_and(|o| o.connection() == *connection)
                    {
                        self.outboxes.remove(client);
                    }
                }
                Some(event)
            }
            Input::Connected { client, outbox } => {
                let event = Event::Connected {
                    client: client.clone(),
                    connection: outbox.connection(),
                    features: features(&outbox),
                };
                self.outboxes.insert(client, outbox);
                Some(event)
            }
            Input::Subscribed { client } => {
                let outbox = self.outboxes.get(&client)?;
                Some(Event::Subscribed {
                    connection: outbox.connection(),
                    features: features(outbox),
                    client,
                })
            }
            Input::Method { mut call, reply } => {
                self.next_call += 1;
                call.id = self.next_call;
                self.callers.insert(call.id, reply);
                Some(Event::MethodCalled(call))
            }
            Input::Stored {
                endpoints,
                admitted,
            } => {
                self.next_admission += 1;
                self.admissions.insert(self.next_admission, admitted);
                Some(Event::Stored {
                    endpoints,
                    admission: self.next_admission,
                })
            }
            Input::Tick => Some(Event::Tick),
        }
    }

    fn queue(&mut self, endpoint: &Arc<str>) -> &EndpointQueue {
        self.queues
            .entry(endpoint.clone())
            .or_insert_with(|| self.log.endpoint(endpoint))
    }

    /// Carries out `actions` and those that the outcomes of its reads bring.
    fn carry_out(&mut self, state: &mut EdgeHubState, actions: Vec<Action>) {
        let mut work = VecDeque::from(actions);
        while let Some(action) = work.pop_front() {
            match action {
                Action::Read {
                    endpoint,
                    topic,
                    max,
                    max_bytes,
                } => {
                    let read = self.read(endpoint, &topic, max, max_bytes);
                    tracing::trace!(?read, "hub loop read");
                    work.extend(state.handle(read, Instant::now()));
                }
                Action::Deliver {
                    client,
                    connection,
                    endpoint,
                    input,
                    deliveries,
                } => self.deliver(&client, connection, &endpoint, &input, &deliveries),
                Action::Complete { endpoint, seq } => {
                    self.queue(&endpoint).ack(seq);
                }
                Action::DeadLetter { endpoint, seq } => {
                    self.queue(&endpoint).dead_letter(seq);
                }
                Action::Rewind { endpoint } => self.queue(&endpoint).rewind(),
                Action::SendMethod {
                    client,
                    connection,
                    rid,
                    method,
                    payload,
                } => {
                    if let Some(outbox) = self
                        .outboxes
                        .get(&client)
                        .filter(|o| o.connection() == connection)
                    {
                        outbox.send(Outgoing::MethodRequest {
                            rid,
                            method,
                            payload,
                        });
                    }
                }
                Action::Admit { admission } => {
                    if let Some(admitted) = self.admissions.remove(&admission) {
                        // The sender's connection may have closed meanwhile: nobody to tell.
                        let _ = admitted.send(());
                    }
                }
                Action::DeclarePresence(presence) => {
                    self.declare.send_replace(Some(presence));
                }
                Action::MethodDone { id, outcome } => {
                    if let Some(reply) = self.callers.remove(&id) {
                        // The caller may have given up (its HTTP request closed): nobody to tell.
                        let _ = reply.send(outcome);
                    }
                }
            }
        }
        // Records the state gave back rather than pushed were rewound in the log.
        self.fetched.clear();
    }

    /// Hands out up to `max` records of `endpoint`, up to `max_bytes` of payload (the last may pass it), each
    /// with its whole topic (`topic` and the record's property bag); a record that does not decode is
    /// acknowledged and skipped.
    fn read(&mut self, endpoint: Arc<str>, topic: &str, max: usize, max_bytes: usize) -> Event {
        let queue = self.queue(&endpoint).clone();
        let batch = match queue.next_batch_within(max, max_bytes) {
            Ok(batch) => batch,
            Err(error) => {
                // Read again on the next message stored, acknowledgement or connection.
                tracing::error!(%endpoint, %error, "cannot read an input endpoint's queue");
                return Event::Read {
                    endpoint,
                    records: Vec::new(),
                    more: false,
                    queued: 0,
                };
            }
        };
        let mut records = Vec::with_capacity(batch.len());
        let mut fetched = Vec::with_capacity(batch.len());
        let sender = self.metrics.is_enabled();
        for delivery in batch {
            match ForInput::read(&delivery.payload, topic, sender) {
                Ok(read) => {
                    fetched.push((delivery.seq, read));
                    records.push(Handed {
                        seq: delivery.seq,
                        bytes: delivery.payload.len(),
                    });
                }
                Err(error) => {
                    tracing::warn!(%endpoint, seq = delivery.seq, %error, "a stored message does not decode: skipped");
                    queue.ack(delivery.seq);
                }
            }
        }
        self.fetched.insert(endpoint.clone(), fetched);
        Event::Read {
            endpoint,
            records,
            more: queue.has_pending(),
            queued: usize::try_from(queue.queued()).unwrap_or(usize::MAX),
        }
    }

    /// Pushes the records of `endpoint`'s read that the state delivers (all of them, in order, but those it
    /// dead-lettered) to `client`'s input on `connection`.
    fn deliver(
        &mut self,
        client: &str,
        connection: u64,
        endpoint: &Arc<str>,
        input: &str,
        deliveries: &[Delivery],
    ) {
        let Some(fetched) = self.fetched.remove(endpoint) else {
            return;
        };
        let Some(outbox) = self
            .outboxes
            .get(client)
            .filter(|o| o.connection() == connection)
        else {
            return;
        };
        let mut fetched = fetched.into_iter();
        for delivery in deliveries {
            // The deliveries are a subsequence of the records read, in the same order.
            let Some((_, read)) = fetched.find(|(seq, _)| *seq == delivery.seq) else {
                return;
            };
            if let Some((from, output)) = &read.sender {
                self.metrics
                    .sent_to_input(from, output.as_deref(), client, input);
            }
            // A full outbox closes its connection; what it did not take goes again on the next one.
            outbox.send(Outgoing::Input {
                delivery_id: delivery.id,
                topic: read.topic,
                body: read.body,
            });
        }
    }
}

#[cfg(test)]
mod tests;
