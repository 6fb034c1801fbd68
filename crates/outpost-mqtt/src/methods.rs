//! Direct-method calls waiting for their answer, each bound to the identity and the connection it was sent to.
//!
//! A method request goes out on one connection; only that identity, on that connection, may answer it. An
//! answer from anyone else (another device guessing request ids, a module answering for another module) is
//! dropped and logged, and the call keeps waiting for its real answer. Request ids are 128 random bits, so
//! they cannot be guessed either. The hub and the edge hub keep their calls here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// The answer of a direct method: the status the client chose and its payload bytes.
pub type MethodAnswer = (i32, Vec<u8>);

/// Why a call could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// As many calls as allowed are waiting already.
    #[error("{0} method calls are waiting for their answer already")]
    TooManyCalls(usize),
    /// A call with this request id is waiting already (only for ids chosen elsewhere).
    #[error("a method call with request id {0} is waiting already")]
    DuplicateRequestId(String),
}

/// Why an answer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// No call waits under this request id (it timed out, or never existed).
    #[error("no method call waits for request id {0}")]
    Unknown(String),
    /// The call was sent to another identity or on another connection.
    #[error("request id {rid} was sent to {target}, not to {from} on this connection")]
    NotTheTarget {
        /// The request id.
        rid: String,
        /// Who the call was sent to.
        target: String,
        /// Who answered.
        from: String,
    },
}

/// A call whose request went out: who it went to, on which connection, and what waits for its answer.
#[derive(Debug)]
struct Waiting<W> {
    /// The client id (`d` or `d/m`) the request was sent to.
    target: String,
    /// The connection it was sent on.
    connection: u64,
    waiter: W,
}

/// The binding rule of direct-method calls, without I/O: calls by request id, each bound to its target and
/// connection, bounded. `W` is what waits for the answer: a channel in [`PendingMethods`] (the hub), a call
/// handle in the edge hub's state machine.
#[derive(Debug)]
pub struct MethodTable<W> {
    calls: HashMap<String, Waiting<W>>,
    max_calls: usize,
}

impl<W> MethodTable<W> {
    /// A table holding at most `max_calls` waiting calls.
    pub fn new(max_calls: usize) -> Self {
        Self {
            calls: HashMap::new(),
            max_calls,
        }
    }

    /// Registers a call sent to `target` on `connection` under `rid`; refused past the limit, or when a call
    /// with that id waits already.
    pub fn insert(
        &mut self,
        rid: &str,
        target: &str,
        connection: u64,
        waiter: W,
    ) -> Result<(), CallError> {
        if self.calls.len() >= self.max_calls {
            return Err(CallError::TooManyCalls(self.max_calls));
        }
        if self.calls.contains_key(rid) {
            return Err(CallError::DuplicateRequestId(rid.to_owned()));
        }
        self.calls.insert(
            rid.to_owned(),
            Waiting {
                target: target.to_owned(),
                connection,
                waiter,
            },
        );
        Ok(())
    }

    /// Takes an answer from `from` (a client id) on `connection`: the call's waiter, only if the answer came
    /// from the call's target on the connection the request went out on. A refused answer leaves the call
    /// waiting.
    pub fn answer(&mut self, from: &str, connection: u64, rid: &str) -> Result<W, AnswerError> {
        let waiting = self
            .calls
            .get(rid)
            .ok_or_else(|| AnswerError::Unknown(rid.to_owned()))?;
        if waiting.target != from || waiting.connection != connection {
            return Err(AnswerError::NotTheTarget {
                rid: rid.to_owned(),
                target: waiting.target.clone(),
                from: from.to_owned(),
            });
        }
        self.remove(rid)
            .ok_or_else(|| AnswerError::Unknown(rid.to_owned()))
    }

    /// Forgets a call (it timed out, or its caller went away): its waiter, if it was waiting.
    pub fn remove(&mut self, rid: &str) -> Option<W> {
        self.calls.remove(rid).map(|waiting| waiting.waiter)
    }

    /// Calls waiting.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether no call waits.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// Method calls waiting for their answer, by request id, shared by the tasks that send requests and the
/// connections that read the answers.
pub struct PendingMethods {
    /// A std `Mutex`: held for one table operation, never across an `.await`.
    calls: Mutex<MethodTable<oneshot::Sender<MethodAnswer>>>,
}

/// A registered call: its request id, and the answer to wait for. Dropping it forgets the call.
pub struct PendingCall<'a> {
    rid: String,
    answer: oneshot::Receiver<MethodAnswer>,
    table: &'a PendingMethods,
}

/// A fresh request id: 128 random bits in hex, unguessable by other clients.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A method answer's payload as JSON: nothing (or only white space) is `null`, JSON is itself, anything
/// else a string of its text.
pub fn answer_payload(payload: &[u8]) -> serde_json::Value {
    if payload.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
        })
    }
}

impl PendingMethods {
    /// A table holding at most `max_calls` waiting calls.
    pub fn new(max_calls: usize) -> Self {
        Self {
            calls: Mutex::new(MethodTable::new(max_calls)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MethodTable<oneshot::Sender<MethodAnswer>>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a call to `target` (a client id) sent on `connection`, under a fresh request id.
    pub fn call(&self, target: &str, connection: u64) -> Result<PendingCall<'_>, CallError> {
        self.call_with_id(new_request_id(), target, connection)
    }

    /// Registers a call under a request id chosen elsewhere (the hub's, for a call an edge hub forwards).
    pub fn call_with_id(
        &self,
        rid: String,
        target: &str,
        connection: u64,
    ) -> Result<PendingCall<'_>, CallError> {
        let (answer_tx, answer) = oneshot::channel();
        self.lock().insert(&rid, target, connection, answer_tx)?;
        Ok(PendingCall {
            rid,
            answer,
            table: self,
        })
    }

    /// Takes an answer from `from` (a client id) on `connection`: accepted only from the call's target, on
    /// the connection the request went out on. A refused answer leaves the call waiting.
    pub fn answer(
        &self,
        from: &str,
        connection: u64,
        rid: &str,
        answer: MethodAnswer,
    ) -> Result<(), AnswerError> {
        let waiter = self.lock().answer(from, connection, rid)?;
        // The caller may have stopped waiting as the answer came: the answer is accepted either way.
        let _ = waiter.send(answer);
        Ok(())
    }

    /// Calls waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no call waits.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl PendingCall<'_> {
    /// The request id to send with the request.
    pub fn rid(&self) -> &str {
        &self.rid
    }

    /// Waits up to `timeout` for the answer; `None` if none came.
    pub async fn answer(mut self, timeout: Duration) -> Option<MethodAnswer> {
        tokio::time::timeout(timeout, &mut self.answer)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.rid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_target_on_its_connection_answers_the_call() {
        let table = PendingMethods::new(8);
        let call = table.call("devA", 7).unwrap();
        let rid = call.rid().to_owned();
        table
            .answer("devA", 7, &rid, (200, b"{}".to_vec()))
            .unwrap();
        assert_eq!(
            call.answer(Duration::from_secs(1)).await,
            Some((200, b"{}".to_vec()))
        );
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn another_identity_cannot_answer_and_the_call_keeps_waiting() {
        let table = PendingMethods::new(8);
        let call = table.call("devA", 7).unwrap();
        let rid = call.rid().to_owned();
        assert!(matches!(
            table.answer("devB", 9, &rid, (200, b"forged".to_vec())),
            Err(AnswerError::NotTheTarget { .. })
        ));
        table
            .answer("devA", 7, &rid, (201, b"real".to_vec()))
            .unwrap();
        assert_eq!(
            call.answer(Duration::from_secs(1)).await,
            Some((201, b"real".to_vec()))
        );
    }

    #[test]
    fn the_same_identity_on_another_connection_cannot_answer() {
        let table = PendingMethods::new(8);
        let call = table.call("dev1/mod1", 3).unwrap();
        assert!(matches!(
            table.answer("dev1/mod1", 4, call.rid(), (200, Vec::new())),
            Err(AnswerError::NotTheTarget { .. })
        ));
    }

    #[test]
    fn request_ids_are_unguessable_and_unique() {
        let table = PendingMethods::new(8);
        let a = table.call("d", 1).unwrap();
        let b = table.call("d", 1).unwrap();
        assert_ne!(a.rid(), b.rid());
        assert_eq!(a.rid().len(), 32, "128 bits in hex");
    }

    #[test]
    fn a_dropped_call_is_forgotten_and_its_answer_is_unknown() {
        let table = PendingMethods::new(8);
        let rid = table.call("d", 1).unwrap().rid().to_owned();
        assert!(table.is_empty());
        assert!(matches!(
            table.answer("d", 1, &rid, (200, Vec::new())),
            Err(AnswerError::Unknown(_))
        ));
    }

    #[test]
    fn calls_past_the_limit_are_refused() {
        let table = PendingMethods::new(2);
        let _a = table.call("d", 1).unwrap();
        let _b = table.call("d", 1).unwrap();
        assert_eq!(table.call("d", 1).err(), Some(CallError::TooManyCalls(2)));
    }

    #[test]
    fn a_forwarded_request_id_already_waiting_is_refused() {
        let table = PendingMethods::new(8);
        let _a = table.call_with_id("x".into(), "d", 1).unwrap();
        assert!(matches!(
            table.call_with_id("x".into(), "d", 1),
            Err(CallError::DuplicateRequestId(_))
        ));
    }
}
