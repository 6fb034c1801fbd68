//! The hub's AMQP 1.0 service head (Event Hubs-compatible endpoint, cloud-to-device messages).

pub mod backend;

pub use backend::*;
