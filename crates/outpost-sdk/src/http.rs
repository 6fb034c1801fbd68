//! One HTTP/1.1 exchange over any byte stream: the workload API's Unix socket, the gateway's TLS socket.
//!
//! Each call opens its own connection and sends one request, as the Azure SDK's requests sessions do in
//! practice for these rare calls; there is no pool to keep healthy.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest response body read (the trust bundle is the biggest: a few certificates).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why an HTTP exchange failed (before any status came back).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The HTTP layer failed (connection closed, malformed response...).
    #[error("HTTP exchange failed: {0}")]
    Hyper(#[from] hyper::Error),
    /// The response body is larger than any answer these APIs give.
    #[error("the response body is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// Sends `request` over `stream` and reads the whole answer: `(status, body)`.
pub(crate) async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection future drives the socket; it ends when the exchange is over and `sender` is dropped.
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTP connection ended with an error");
        }
    });
    let result = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| match error.downcast::<hyper::Error>() {
                Ok(error) => HttpError::Hyper(*error),
                Err(_) => HttpError::TooLarge,
            })?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}
