//! Direct-method calls waiting for their answer, local (the HTTPS method API) and forwarded from the hub. Each is
//! bound to the client and the connection its request went out on: only that client, on that connection, may
//! answer it; an answer from anyone else is dropped and logged, and the call keeps waiting for its real answer
//! or its deadline. Bounded: at most `max` calls wait at once, each for at most its timeout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use outpost_mqtt::methods::{CallError, MethodTable};

/// Method calls that may wait for their answers at once (local and forwarded from the hub); past this a
/// call is refused ([`MethodOutcome::TooManyCalls`]).
pub const MAX_PENDING_METHODS: usize = 10_000;

/// A method call to send to a client of the edge hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodCall {
    /// The caller's handle for this call, unique while it waits: [`Action::MethodDone`](super::Action) names it.
    pub id: u64,
    /// The request id sent to the client (fresh and random for a local call, the hub's for a forwarded one).
    pub rid: String,
    /// The client id of the target.
    pub target: String,
    /// The method's name.
    pub method: String,
    /// The request's payload.
    pub payload: Vec<u8>,
    /// How long the call waits for its answer.
    pub timeout: Duration,
}

/// How a method call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodOutcome {
    /// The target answered.
    Answered {
        /// The status it chose.
        status: i32,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The target is not connected or does not listen for methods: nothing was sent.
    NotListening,
    /// As many calls as allowed are waiting already: nothing was sent.
    TooManyCalls(usize),
    /// A call with this request id waits already: nothing was sent.
    DuplicateRequestId,
    /// No answer came before the timeout.
    TimedOut,
}

/// A waiting call's handle and deadline (its target and connection are kept by the shared [`MethodTable`]).
#[derive(Debug)]
struct Waiting {
    id: u64,
    deadline: Instant,
}

/// The waiting calls by request id, bound to their targets' connections by outpost-mqtt's [`MethodTable`]
/// (the rule the hub applies too), and their deadlines in order.
#[derive(Debug)]
pub(super) struct PendingMethods {
    calls: MethodTable<Waiting>,
    deadlines: BTreeSet<(Instant, String)>,
}

impl PendingMethods {
    pub(super) fn new(max: usize) -> Self {
        Self {
            calls: MethodTable::new(max),
            deadlines: BTreeSet::new(),
        }
    }

    /// Registers `call` sent on `connection`; why not, if it cannot wait.
    pub(super) fn wait(
        &mut self,
        call: &MethodCall,
        connection: u64,
        now: Instant,
    ) -> Result<(), MethodOutcome> {
        let deadline = now + call.timeout;
        let waiting = Waiting {
            id: call.id,
            deadline,
        };
        self.calls
            .insert(&call.rid, &call.target, connection, waiting)
            .map_err(|error| match error {
                CallError::TooManyCalls(max) => MethodOutcome::TooManyCalls(max),
                CallError::DuplicateRequestId(_) => MethodOutcome::DuplicateRequestId,
            })?;
        self.deadlines.insert((deadline, call.rid.clone()));
        Ok(())
    }

    /// Takes an answer from `from` on `connection`: the id of the call it ends, if it came from the call's
    /// target on the connection the request went out on.
    pub(super) fn answer(&mut self, from: &str, connection: u64, rid: &str) -> Option<u64> {
        match self.calls.answer(from, connection, rid) {
            Ok(waiting) => {
                self.deadlines.remove(&(waiting.deadline, rid.to_owned()));
                Some(waiting.id)
            }
            Err(error) => {
                tracing::warn!(client = from, connection, rid, %error, "method answer dropped");
                None
            }
        }
    }

    /// The ids of the calls whose deadline is past at `now`; they wait no longer.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some(first) = self.deadlines.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, rid)) = self.deadlines.pop_first() {
                if let Some(waiting) = self.calls.remove(&rid) {
                    expired.push(waiting.id);
                }
            }
        }
        expired
    }

    /// When the next call times out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Calls waiting.
    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }
}
