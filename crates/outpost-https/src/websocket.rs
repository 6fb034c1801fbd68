//! WebSocket messages as a byte stream, for protocols that run over WebSocket unchanged (MQTT on the HTTPS
//! port, as the Azure IoT SDKs do with `websockets=True`).
//!
//! The protocol's framing is independent of WebSocket's: a binary message may carry part of a packet, one
//! packet or several, so reading hands out the bytes of each message in turn and the protocol's own parser
//! finds the packets. Each write is sent as one binary message.
//!
//! [`mqtt_over_websocket`] is the route the hub's and the edge hub's HTTPS ports share: it upgrades
//! `GET /$iothub/websocket` and hands the stream to their MQTT server ([`crate::handoff`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The path the Azure IoT SDKs open for MQTT over WebSocket (`websockets=True`, on port 443).
pub const MQTT_WEBSOCKET_PATH: &str = "/$iothub/websocket";

/// The WebSocket subprotocol of MQTT, which the SDK (paho) asks for.
const MQTT_SUBPROTOCOL: &str = "mqtt";

/// Room in a WebSocket message beyond one protocol packet of the largest size (for a client that packs the
/// start of the next packet into the same message).
pub const WEBSOCKET_MESSAGE_HEADROOM: usize = 16 * 1024;

/// The route that upgrades `GET /$iothub/websocket` (subprotocol `mqtt`) and hands the WebSocket, read as
/// bytes, to the MQTT server behind `mqtt`, which serves it like a connection of its own port: CONNECT and its
/// SAS token, packet size, queues, token expiry, connection cap.
///
/// Merge it into the HTTPS port's router, outside that router's authorisation layers: the SDK sends no token
/// with the upgrade (it authenticates in CONNECT). What the route allows before CONNECT is the HTTP upgrade
/// itself; the MQTT server's CONNECT timeout and connection cap apply from then on. A WebSocket message may
/// hold at most `max_packet_size` plus a little, whatever MQTT packets or parts of them it carries.
pub fn mqtt_over_websocket(mqtt: crate::handoff::StreamHandoff, max_packet_size: usize) -> Router {
    let upgrade = MqttUpgrade {
        mqtt,
        max_message_size: max_packet_size + WEBSOCKET_MESSAGE_HEADROOM,
    };
    Router::new()
        .route(MQTT_WEBSOCKET_PATH, get(upgrade_to_mqtt))
        .with_state(upgrade)
}

/// What the MQTT-over-WebSocket route needs.
#[derive(Clone)]
struct MqttUpgrade {
    mqtt: crate::handoff::StreamHandoff,
    max_message_size: usize,
}

async fn upgrade_to_mqtt(
    State(upgrade): State<MqttUpgrade>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_chain: Option<axum::Extension<crate::ClientCertificateChain>>,
    websocket: WebSocketUpgrade,
) -> Response {
    let websocket = websocket.protocols([MQTT_SUBPROTOCOL]);
    if websocket.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol must be mqtt",
        )
            .into_response();
    }
    let MqttUpgrade {
        mqtt,
        max_message_size,
    } = upgrade;
    websocket
        .max_message_size(max_message_size)
        .max_frame_size(max_message_size)
        // The MQTT writer flushes after each batch, so the buffer holds about one batch and one packet.
        .max_write_buffer_size(2 * max_message_size + (128 << 10))
        .on_failed_upgrade(move |error| tracing::debug!(%peer, %error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            // The client certificate of the TLS under the WebSocket goes along: X.509 devices authenticate at
            // CONNECT with it, as on port 8883.
            let client_chain = client_chain.map(|axum::Extension(chain)| chain);
            if let Err(error) =
                mqtt.hand_over_with_certificate(WebSocketBytes::new(socket), peer, client_chain)
            {
                tracing::info!(%peer, %error, "MQTT over WebSocket refused");
            }
        })
}

/// A WebSocket (anything that streams and sinks [`Message`]s, such as axum's `WebSocket`) read and written as
/// bytes.
///
/// Reading: binary messages are the bytes; pings and pongs are skipped (the WebSocket answers pings itself); a
/// close message, or the end of the stream, is the end of the bytes; a text message is an error
/// ([`io::ErrorKind::InvalidData`]), because a binary protocol never sends one. Writing: each write is one
/// binary message; flushing and shutting down flush and close the WebSocket.
pub struct WebSocketBytes<W> {
    socket: W,
    /// What is left of the binary message being read.
    unread: Bytes,
    /// A close message or the end of the stream was read.
    ended: bool,
}

impl<W> WebSocketBytes<W> {
    /// Reads and writes `socket` as bytes.
    pub fn new(socket: W) -> Self {
        Self {
            socket,
            unread: Bytes::new(),
            ended: false,
        }
    }
}

fn io_error(error: axum::Error) -> io::Error {
    io::Error::other(error)
}

impl<W> AsyncRead for WebSocketBytes<W>
where
    W: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.unread = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.ended = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message where binary data was expected",
                    )))
                }
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<W> AsyncWrite for WebSocketBytes<W>
where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut this.socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_close(cx)
            .map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A WebSocket that yields the given messages and keeps what is sent to it.
    #[derive(Default)]
    struct Scripted {
        incoming: VecDeque<Result<Message, axum::Error>>,
        sent: Vec<Message>,
        closed: bool,
    }

    impl Stream for Scripted {
        type Item = Result<Message, axum::Error>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.get_mut().incoming.pop_front())
        }
    }

    impl Sink<Message> for Scripted {
        type Error = axum::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), axum::Error> {
            self.get_mut().sent.push(item);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            self.get_mut().closed = true;
            Poll::Ready(Ok(()))
        }
    }

    fn scripted(messages: Vec<Message>) -> WebSocketBytes<Scripted> {
        WebSocketBytes::new(Scripted {
            incoming: messages.into_iter().map(Ok).collect(),
            ..Scripted::default()
        })
    }

    /// An MQTT PINGREQ, and a PUBLISH (QoS 0, topic "a/b", payload "hello").
    const PINGREQ: &[u8] = &[0xc0, 0x00];
    const PUBLISH: &[u8] = &[
        0x30, 0x0a, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
    ];

    fn binary(parts: &[&[u8]]) -> Message {
        Message::Binary(Bytes::from(parts.concat()))
    }

    #[tokio::test]
    async fn a_packet_split_across_messages_reads_whole() {
        let mut stream = scripted(vec![
            binary(&[&PUBLISH[..1]]),
            binary(&[&PUBLISH[1..5]]),
            Message::Ping(Bytes::new()),
            binary(&[&PUBLISH[5..]]),
        ]);
        let mut read = vec![0; PUBLISH.len()];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(read, PUBLISH);
        assert_eq!(stream.read(&mut [0; 8]).await.unwrap(), 0, "then the end");
    }

    #[tokio::test]
    async fn packets_joined_in_one_message_read_one_after_the_other() {
        let mut stream = scripted(vec![
            binary(&[PINGREQ, PUBLISH, &PINGREQ[..1]]),
            binary(&[&PINGREQ[1..]]),
            Message::Close(None),
            binary(&[PUBLISH]),
        ]);
        let mut read = Vec::new();
        stream.read_to_end(&mut read).await.unwrap();
        assert_eq!(
            read,
            [PINGREQ, PUBLISH, PINGREQ].concat(),
            "nothing after close"
        );
    }

    #[tokio::test]
    async fn a_text_message_is_an_error() {
        let mut stream = scripted(vec![binary(&[PINGREQ]), Message::text("CONNECT")]);
        let mut read = [0; 2];
        stream.read_exact(&mut read).await.unwrap();
        let error = stream.read(&mut read).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn each_write_is_one_binary_message() {
        let mut stream = scripted(Vec::new());
        stream
            .write_all(&[PINGREQ, PUBLISH].concat())
            .await
            .unwrap();
        stream.write_all(PINGREQ).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(
            stream.socket.sent,
            [binary(&[PINGREQ, PUBLISH]), binary(&[PINGREQ])]
        );
        assert!(stream.socket.closed);
    }
}
