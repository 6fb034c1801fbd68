//! Automatic configurations and IoT Edge deployments over the fleet (IoT Hub's automatic device management).
//!
//! A [`Configuration`] targets twins with a condition in the query language's WHERE grammar and carries
//! desired properties: device configurations (`deviceContent`) and module configurations (`moduleContent`)
//! set property paths, edge deployments (`modulesContent`) make an edge device's whole deployment from the
//! base deployment of highest priority with every layered deployment that targets it on top.
//!
//! Start with [`assign`], the pure evaluation of one device: which configurations win, and the patch that
//! brings its twins there. [`evaluate`] runs it inside a write transaction, writing only what differs;
//! [`schedule`] decides when (a burst of changes costs one evaluation, and every device is evaluated again
//! periodically); [`Configurations`] is the service that stores configurations, answers them with their
//! metrics and owns the evaluation task. What configurations gave each device is recorded
//! ([`Assignment`]), so that a device that stops matching loses exactly that.
//!
//! On PostgreSQL every replica runs the task: each evaluates the devices changed through it, and all
//! periodically. An evaluation plans again inside its write transaction and writes nothing when the twins
//! already hold the result, so replicas converge instead of fighting.

pub mod assign;
pub mod configuration;
pub(crate) mod evaluate;
pub mod rollout;
pub mod schedule;
mod service;

pub use assign::{Assignment, EdgeDeployment, Status, TwinAssignment};
pub use configuration::{
    Configuration, ConfigurationContent, ConfigurationKind, Metrics, MAX_CONFIGURATIONS,
};
pub use schedule::FleetSignal;
pub(crate) use service::shown_configurations;
pub use service::Configurations;
