//! Outpost's pure domain: everything the hub and the edge agree on, with no I/O, no async and no randomness.
//!
//! Start with [`id`] (device and module ids and the [`Identity`] that owns a connection), then [`sas`]
//! (shared-access-signature tokens: parse, verify, build as the Azure SDKs do) and [`connection_string`].
//! [`message`] turns the MQTT property bag of a topic into system and application properties and back.
//! [`twin`] holds a twin document: tags, desired and reported sections with their `$version` and `$metadata`,
//! the merge-patch and replace rules and the IoT Hub limits; a refused change leaves the twin untouched.
//! [`manifest`] validates an IoT Edge deployment manifest and reads `$edgeAgent` and `$edgeHub` from it.
//! `quote` (private) percent-encodes exactly as Python's `urllib.parse`, which is what the Azure SDKs use.
//! [`query`] is IoT Hub's query language over twin documents (device queries, configuration target
//! conditions, job conditions); it shares the lexer rules, values and comparison of [`route`].
//! [`edge_link`] is the wire contract of the upstream link between an edge device and the hub.
//! Every public function returns an error instead of panicking on bad input.

pub mod connection_string;
pub mod edge_link;
pub mod id;
pub mod manifest;
pub mod message;
pub mod provisioning;
pub mod query;
pub mod quote;
pub mod route;
pub mod sas;
pub mod twin;
pub mod units;
pub mod workload_api;

pub use connection_string::*;
pub use id::{DeviceId, IdError, Identity, ModuleId};
pub use manifest::*;
pub use message::*;
pub use query::{Collection, Query, QueryCondition, QueryError};
pub use route::{Condition, MessageSource, Route, RouteError, RouteSource, Sink};
pub use sas::*;
pub use twin::{Twin, TwinError, TwinSection};
