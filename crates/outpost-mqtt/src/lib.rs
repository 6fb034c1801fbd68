//! The device-protocol head of Outpost: MQTT 3.1.1 as IoT Hub speaks it, over a trait of backend operations.
//!
//! Read it in layers, each testable alone. [`packet`] is the codec: one module per packet type, two-phase
//! framing, [`decode`] and [`encode`]. [`topic`] maps IoT Hub topics to requests and builds the topics the
//! server publishes on. [`session`] is a pure state machine: packets and backend pushes in, packets and
//! [`DeviceOperations`] calls out. [`server`] is the tokio/TLS driver ([`serve`]): accept loop, CONNECT and
//! authentication, one task per connection that reads and runs its session, a batching writer, and the registry that closes a
//! client's older connection and keeps persistent sessions. [`client`] is a small MQTT/TLS client for the
//! benchmark, the Rust SDK and the tests. [`ops`] holds the contract with the backend.

pub mod client;
mod io;
pub mod methods;
pub mod ops;
pub mod packet;
pub mod provisioning;
pub mod server;
pub mod session;
pub mod topic;

pub use client::{Client, ClientError};
pub use io::ReadError;
pub use methods::{MethodAnswer, MethodTable, PendingMethods};
pub use ops::{
    ConnectRefusal, ConnectionTable, DeviceOperations, Feature, Inbox, OperationError, Outbox,
    OutboxOverflow, Outgoing, PartlyAccepted,
};
pub use packet::*;
pub use server::{serve, ServerConfig, DEFAULT_MAX_PACKET_SIZE};
