//! The Outpost edge runtime.
//!
//! Start at [`agent`]: it reads the `$edgeAgent` desired properties, keeps the last accepted deployment on disk
//! ([`agent::lkg`]), plans the difference with what runs ([`agent::plan`]), and carries it out through a
//! [`runtime::ModuleRuntime`] (Docker or native processes), supervising instances by their restart policy
//! ([`agent::restart`]). Each module gets an identity in the hub and a workload socket ([`workload`]) that signs
//! its tokens. [`config`] is the daemon's TOML settings.

pub mod agent;
pub mod config;
pub mod daemon;
pub mod daemon_log;
pub mod device_certificate;
pub mod edgehub;
pub mod hub_client;
pub mod hub_http;
pub mod identities;
pub mod management;
pub mod metrics;
pub mod provisioning;
pub mod runtime;
pub mod support_bundle;
pub mod workload;

/// Locks `mutex`, going on after a panic in another holder: every lock in this crate guards state that its
/// holders leave consistent before anything that can panic, so a poisoned lock is safe to take.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
