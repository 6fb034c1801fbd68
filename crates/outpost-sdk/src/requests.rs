//! How client handles talk to the driver task: a [`Command`] with a oneshot for the answer, sent and
//! awaited (with the operation timeout) by a [`Requester`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;
use crate::topics::Feature;

/// Whether a client is connected now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// Connected and subscribed.
    Connected,
    /// The connection was lost; the client is reconnecting with back-off.
    Disconnected,
    /// The client stopped: closed by the application, or refused on a reconnect (the operations return why).
    Closed,
}

/// A request from a client handle to its driver.
pub(crate) enum Command {
    /// Publish at QoS 1; answered on PUBACK.
    Publish {
        topic: String,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// A twin GET or reported patch; answered by the twin response.
    Twin {
        patch: Option<Value>,
        reply: oneshot::Sender<Result<TwinAnswer, ClientError>>,
    },
    /// Subscribe to a push; answered on SUBACK.
    Subscribe {
        feature: Feature,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// Disconnect and stop.
    Close,
}

/// How a handle asks the driver for something and waits for the answer.
#[derive(Debug, Clone)]
pub(crate) struct Requester {
    commands: mpsc::UnboundedSender<Command>,
    timeout: Duration,
    fatal: Arc<OnceLock<ClientError>>,
}

impl Requester {
    /// A requester on a driver's queue.
    pub(crate) fn new(
        commands: mpsc::UnboundedSender<Command>,
        timeout: Duration,
        fatal: Arc<OnceLock<ClientError>>,
    ) -> Self {
        Self {
            commands,
            timeout,
            fatal,
        }
    }

    /// Sends the command `make` builds and waits for its answer, at most the operation timeout.
    pub(crate) async fn request<T>(
        &self,
        what: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Command,
    ) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| self.stopped())?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(ClientError::Timeout(format!(
                "{what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Asks the driver to close.
    pub(crate) fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    /// Why the driver stopped: the error it stopped with, or closed.
    pub(crate) fn stopped(&self) -> ClientError {
        self.fatal.get().cloned().unwrap_or(ClientError::Closed)
    }
}

/// The server's answer to a twin request.
#[derive(Debug)]
pub(crate) struct TwinAnswer {
    /// 200 (GET), 204 (patch), or an error status.
    pub(crate) status: u16,
    /// The new reported `$version` after a patch.
    pub(crate) version: Option<u64>,
    /// The body (the twin for a GET, `{"message":..}` for an error).
    pub(crate) body: Bytes,
}
