//! What can go wrong, as one enum: every variant says what happened in terms a module author can act on.

use std::sync::Arc;

/// Why a client operation failed.
///
/// Errors are `Clone` so that the reason a client stopped (say, its key was revoked while it was
/// reconnecting) can be handed to every caller that was waiting on it.
///
/// ```
/// use outpost_sdk::ClientError;
///
/// let error = ClientError::Unauthorized("dev1: the token is for another identity".into());
/// assert!(error.is_fatal());
/// assert_eq!(error.to_string(), "not authorized: dev1: the token is for another identity");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The hub or gateway refused the credentials: a wrong key, an expired token, an unknown or disabled
    /// identity (CONNACK 4 or 5, HTTP 401 or 403). Retrying with the same credentials cannot help.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// What was addressed does not exist or is not connected (HTTP or twin status 404).
    #[error("not found: {0}")]
    NotFound(String),
    /// No answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The hub refused a reported-properties patch (too large, too deep, an illegal key...); nothing changed.
    #[error("reported patch rejected ({status}): {message}")]
    PatchRejected {
        /// The status the hub answered with (400 for a patch that breaks the twin rules).
        status: u16,
        /// The hub's explanation.
        message: String,
    },
    /// The hub or gateway answered a request with an error status not covered by a more specific variant.
    #[error("request rejected ({status}): {message}")]
    Rejected {
        /// The status of the answer.
        status: u16,
        /// The explanation sent with it.
        message: String,
    },
    /// The client is set up wrongly: a bad connection string, a missing environment variable, an unusable
    /// CA file. Nothing was sent.
    #[error("configuration: {0}")]
    Configuration(String),
    /// Connecting failed: the host could not be reached or resolved, TLS failed, or the server closed the
    /// connection.
    #[error("connection failed: {context}")]
    Connection {
        /// What was being done, and the cause as text.
        context: String,
        /// The I/O error underneath, if there was one (its text is already in `context`).
        io: Option<Arc<std::io::Error>>,
    },
    /// The server is up but cannot serve now (CONNACK 3); the client retries on its own after the first
    /// connection.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The workload API of the edge runtime failed.
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A message is larger than IoT Hub accepts (256 KiB); it was not sent.
    #[error("message of {size} bytes is larger than the {limit}-byte limit")]
    MessageTooLarge {
        /// The size of the message body.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// This stream was already taken from the client; each can be taken once.
    #[error("the {0} stream was already taken from this client")]
    AlreadyTaken(&'static str),
    /// The operation is not available for this client (method invocation without a gateway, for example).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The client was closed, by [`close`](crate::Client::close) or because every handle was dropped.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// Whether retrying the same thing cannot succeed (bad credentials, bad configuration, a closed client).
    ///
    /// ```
    /// use outpost_sdk::ClientError;
    /// assert!(!ClientError::Timeout("twin GET".into()).is_fatal());
    /// assert!(ClientError::Configuration("no DeviceId".into()).is_fatal());
    /// ```
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Unauthorized(_) | Self::Configuration(_) | Self::Closed | Self::NotSupported(_)
        )
    }

    pub(crate) fn connection(context: impl std::fmt::Display, io: std::io::Error) -> Self {
        Self::Connection {
            context: format!("{context}: {io}"),
            io: Some(Arc::new(io)),
        }
    }

    pub(crate) fn connection_closed(context: impl Into<String>) -> Self {
        Self::Connection {
            context: context.into(),
            io: None,
        }
    }

    /// The error for an HTTP or twin status code of 300 and above.
    pub(crate) fn from_status(status: u16, message: String) -> Self {
        match status {
            401 | 403 => Self::Unauthorized(message),
            404 => Self::NotFound(message),
            408 | 504 => Self::Timeout(message),
            _ => Self::Rejected { status, message },
        }
    }
}

/// The `message` of an error body (`{"message": ".."}` as Outpost and edgeHub send, `{"Message": ".."}` as
/// IoT Hub does), or the body itself.
pub(crate) fn error_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")))
        .and_then(serde_json::Value::as_str)
        .map_or_else(
            || String::from_utf8_lossy(body).trim().to_owned(),
            str::to_owned,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_variant_that_says_what_happened() {
        assert!(matches!(
            ClientError::from_status(401, String::new()),
            ClientError::Unauthorized(_)
        ));
        assert!(matches!(
            ClientError::from_status(404, String::new()),
            ClientError::NotFound(_)
        ));
        assert!(matches!(
            ClientError::from_status(504, String::new()),
            ClientError::Timeout(_)
        ));
        assert!(matches!(
            ClientError::from_status(429, String::new()),
            ClientError::Rejected { status: 429, .. }
        ));
    }

    #[test]
    fn a_connection_error_says_what_failed_underneath() {
        let error = ClientError::connection(
            "cannot reach hub:8883",
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
        );
        assert_eq!(
            error.to_string(),
            "connection failed: cannot reach hub:8883: connection refused"
        );
    }

    #[test]
    fn error_messages_are_read_from_either_json_shape_or_plain_text() {
        assert_eq!(error_message(br#"{"message":"too deep"}"#), "too deep");
        assert_eq!(
            error_message(br#"{"Message":"ErrorCode:DeviceNotFound"}"#),
            "ErrorCode:DeviceNotFound"
        );
        assert_eq!(error_message(b" plain \n"), "plain");
    }
}
