//! Streams another listener established, handed to a protocol server that serves them like its own
//! connections, under its own connection cap: the HTTPS listener upgrades a WebSocket on `/$iothub/websocket` or
//! `/$servicebus/websocket`, and the MQTT or AMQP server takes the stream from there.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// A byte stream that carries a protocol: a TLS stream, or WebSocket messages read and written as bytes.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// A connection whose transport another listener set up, waiting for the server to take it.
pub struct Established {
    pub stream: Box<dyn Transport>,
    pub peer: SocketAddr,
    /// The certificate chain the client presented at that listener's TLS handshake, if it asked for one and got
    /// it: the server may authenticate the client with it as with a chain of its own handshake.
    pub client_chain: Option<crate::ClientCertificateChain>,
}

/// Streams handed over and not yet taken by the server (which takes one when it has a connection permit);
/// past this, handing over is refused and the stream closed, so streams cannot pile up while the server is at
/// its connection cap.
pub const HANDOFF_QUEUE: usize = 64;

/// The sending end of [`handoff`]: gives established streams to a running server.
#[derive(Clone)]
pub struct StreamHandoff(mpsc::Sender<Established>);

/// The receiving end of [`handoff`], for the server.
pub struct HandedStreams(mpsc::Receiver<Established>);

/// Why a stream was not taken; it has been dropped (closed).
#[derive(Debug, thiserror::Error)]
pub enum HandoffRefused {
    /// [`HANDOFF_QUEUE`] streams already wait for the server, which is at its connection cap.
    #[error("the server is at its connection cap")]
    Busy,
    /// The server has stopped.
    #[error("the server has stopped")]
    Stopped,
}

/// A channel of established streams into a server.
pub fn handoff() -> (StreamHandoff, HandedStreams) {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    (StreamHandoff(tx), HandedStreams(rx))
}

impl StreamHandoff {
    /// Gives `stream` (from `peer`) to the server, which serves it like a connection of its own listener. Never
    /// waits: when the server cannot take it soon, the stream is closed.
    pub fn hand_over(
        &self,
        stream: impl Transport,
        peer: SocketAddr,
    ) -> Result<(), HandoffRefused> {
        self.hand_over_with_certificate(stream, peer, None)
    }

    /// [`hand_over`](Self::hand_over) with the certificate chain the client presented at this listener's TLS
    /// handshake.
    pub fn hand_over_with_certificate(
        &self,
        stream: impl Transport,
        peer: SocketAddr,
        client_chain: Option<crate::ClientCertificateChain>,
    ) -> Result<(), HandoffRefused> {
        self.0
            .try_send(Established {
                stream: Box::new(stream),
                peer,
                client_chain,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => HandoffRefused::Busy,
                mpsc::error::TrySendError::Closed(_) => HandoffRefused::Stopped,
            })
    }
}

impl HandedStreams {
    /// The next stream handed over; `None` once every [`StreamHandoff`] is gone.
    pub async fn recv(&mut self) -> Option<Established> {
        self.0.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 443))
    }

    #[tokio::test]
    async fn handing_over_past_the_queue_is_refused_and_after_the_server_stopped_too() {
        let (handoff, handed) = handoff();
        let mut kept = Vec::new();
        for _ in 0..HANDOFF_QUEUE {
            let (ours, theirs) = tokio::io::duplex(64);
            handoff.hand_over(ours, peer()).unwrap();
            kept.push(theirs);
        }
        let (ours, mut theirs) = tokio::io::duplex(64);
        assert!(matches!(
            handoff.hand_over(ours, peer()),
            Err(HandoffRefused::Busy)
        ));
        // The refused stream is closed: its other end reads the end of the stream.
        let mut byte = [0; 1];
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut theirs, &mut byte)
                .await
                .unwrap(),
            0
        );
        drop(handed);
        let (ours, _theirs) = tokio::io::duplex(64);
        assert!(matches!(
            handoff.hand_over(ours, peer()),
            Err(HandoffRefused::Stopped)
        ));
    }
}
