//! The application's end of a push: desired properties, method calls, cloud-to-device and input messages.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

/// A stream of what the server pushes to a client; it ends when the client stops.
///
/// Use [`next`](Self::next), or any `futures` stream combinator (it implements `Stream`). Items wait in
/// the stream until taken, so a slow consumer loses nothing.
///
/// ```no_run
/// # async fn run(client: outpost_sdk::DeviceClient) -> Result<(), outpost_sdk::ClientError> {
/// let mut messages = client.cloud_to_device_messages().await?;
/// let first = messages.next().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Incoming<T> {
    receiver: mpsc::UnboundedReceiver<T>,
}

impl<T> Incoming<T> {
    pub(crate) fn new(receiver: mpsc::UnboundedReceiver<T>) -> Self {
        Self { receiver }
    }

    /// The next item; `None` once the client has stopped.
    pub async fn next(&mut self) -> Option<T> {
        self.receiver.recv().await
    }

    /// The next item if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        self.receiver.try_recv().ok()
    }
}

impl<T> futures_util::Stream for Incoming<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.receiver.poll_recv(cx)
    }
}
