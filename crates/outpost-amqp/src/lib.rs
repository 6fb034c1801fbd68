//! The hub's AMQP 1.0 service head: IoT Hub's Event Hubs-compatible endpoint (reading device telemetry by
//! partition, `$management` properties) and cloud-to-device messages with their feedback, as the Azure
//! service SDKs and `azure-eventhub` speak them on port 5671.
//!
//! Read it in layers. fe2o3-amqp is the codec and the connection, session and link state machines (its
//! `acceptor` side); nothing here decodes what a client sends. [`server`] is the tokio driver ([`serve`];
//! [`serve_with_handoff`] also serves streams another listener set up, as MQTT's does): accept loop and
//! connection cap, TLS, SASL (ANONYMOUS, PLAIN checked by the backend), then one task per
//! connection, session and link. `links` decides what an attach names and whether the connection may use it,
//! and runs each link: a partition's events, `/messages/devicebound`, `/messages/servicebound/feedback`;
//! `requests` runs the request/response nodes, `$cbs` put-token and `$management` READ, with their reply
//! links. The pure parts are apart and tested alone: [`node`] parses addresses, selector filters, a C2D `to`
//! and token audiences; [`claims`] holds what one connection's credentials grant; [`wire`] converts between
//! the backend's types and AMQP messages and builds the nodes' answers. `pad` rewrites only what fe2o3-amqp
//! writes, giving each performative all its fields, as the pure-Python `azure-eventhub` reads them by
//! position. [`backend`] is the contract with the hub, which implements [`ServiceBackend`] over its event
//! stream, policies and C2D queues.

pub mod backend;
pub mod claims;
mod links;
pub mod node;
mod pad;
mod requests;
pub mod server;
pub mod wire;

pub use backend::*;
pub use links::MAX_LINKS_PER_SESSION;
pub use server::{
    handoff, serve, serve_connection, serve_with_handoff, AmqpConfig, HandedStreams,
    HandoffRefused, StreamHandoff, Transport, DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE,
};
