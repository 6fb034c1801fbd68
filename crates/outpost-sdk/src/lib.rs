//! The Rust SDK of Outpost: device and module clients for Outpost hubs and edge hubs (and Azure IoT Hub,
//! whose protocol they speak).
//!
//! A module twin has the structure and the API of a device twin; only the identity that opens the client
//! differs. So there is one client type, [`Client`], and [`DeviceClient`] and [`ModuleClient`] are it for
//! each kind of identity: twin reads, reported patches, the desired-properties stream, telemetry and direct
//! methods are the same calls on both. A module in twenty lines (the `filter` sample):
//!
//! ```no_run
//! use outpost_sdk::{ClientError, ModuleClient};
//! use serde_json::json;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), ClientError> {
//!     let client = ModuleClient::from_environment().await?;
//!     let mut desired = client.desired_properties().await?;
//!     let mut inputs = client.inputs().await?;
//!     let mut threshold = 25.0;
//!     loop {
//!         tokio::select! {
//!             Some(patch) = desired.next() => {
//!                 threshold = patch.get("TemperatureThreshold").and_then(|t| t.as_f64()).unwrap_or(threshold);
//!                 client.patch_reported(json!({ "TemperatureThreshold": threshold })).await?;
//!             }
//!             Some(message) = inputs.next() => {
//!                 let reading: serde_json::Value = serde_json::from_slice(message.body()).unwrap_or_default();
//!                 if reading["machine"]["temperature"].as_f64().is_some_and(|t| t > threshold) {
//!                     client.send_output("output1", message).await?;
//!                 }
//!             }
//!             else => return Ok(()),
//!         }
//!     }
//! }
//! ```
//!
//! Where to read: [`client`] holds the public API and the constructors ([`DeviceClient::from_connection_string`],
//! [`ModuleClient::from_environment`], which reads an [`EdgeEnvironment`]); `config` turns either into what a
//! connection needs. Behind every client runs one task, `driver`, which the handles reach through `requests`
//! (a command and a oneshot per operation). It owns the MQTT connection (`link`, over `outpost-mqtt`'s packet
//! codec), reconnects with back-off, renews tokens (`credentials`, signed locally or by the edge runtime's
//! [`workload`] API), resends what was not acknowledged, and reads the twin again after every reconnection
//! so that the [`twin`] tracker hands the application every desired change exactly once. `topics` is the
//! client's half of the IoT Hub topic grammar; [`methods`] covers direct methods both ways
//! (module-to-module calls go over HTTPS to the gateway, `http`).
//!
//! TLS uses rustls with the `ring` provider passed to each configuration; the SDK never installs a
//! process-wide provider.

pub mod client;
mod config;
mod credentials;
mod driver;
mod environment;
mod error;
mod http;
mod link;
mod message;
pub mod methods;
mod options;
pub mod provisioning;
mod requests;
mod stream;
mod tls;
mod topics;
pub mod twin;
pub mod workload;

/// The one percent-encoding (Python's `urllib.parse` rules), core's.
use outpost_core::quote;

pub use client::{kind, Client, DeviceClient, ModuleClient};
pub use environment::{EdgeEnvironment, RUNTIME_VARIABLES};
pub use error::ClientError;
pub use message::{Message, MAX_MESSAGE_BYTES};
pub use methods::{MethodCall, MethodInvocation, MethodResult, MethodTarget};
pub use options::ClientOptions;
pub use requests::ConnectionStatus;
pub use stream::Incoming;
pub use twin::{DesiredPatch, Twin};
pub use workload::{WorkloadClient, WorkloadError};
