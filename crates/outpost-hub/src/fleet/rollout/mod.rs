//! Safe rollouts: an edge deployment with a rollout policy reaches its targeted devices in waves, each judged by
//! the devices' own reported health, and a wave that fails goes back to what it had.
//!
//! Start with [`machine`], the rollout as a pure persisted state machine (`handle(event, now) -> Vec<Action>`,
//! no I/O, no clock); [`policy`] is the `rollout` field a configuration carries; [`driver`] observes the devices'
//! `$edgeAgent` reports, feeds the machine on twin changes and a timer, stores it, and has the configurations
//! evaluation give or take the deployment (the evaluation leaves a rolling deployment out for every device that
//! [`Rollout::admits`] does not admit).

pub(crate) mod driver;
pub mod machine;
pub mod policy;
pub mod show;

pub use machine::{Action, DeviceState, Event, Health, Phase, Previous, Rollout, RolloutDevice};
pub use policy::RolloutPolicy;
