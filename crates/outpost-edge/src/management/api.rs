//! The wire contract of the management API (the daemon's own Unix socket, which `outpost edge
//! list|logs|restart|stats|support-bundle|check` use): each request as a [`ManagementRequest`] and each JSON
//! answer as a serde type that the daemon and the CLI both import, and the API version every request names.
//!
//! | request                                    | answer                                     |
//! |--------------------------------------------|--------------------------------------------|
//! | `GET /modules`                             | [`ModuleList`]                             |
//! | `GET /modules/{m}/logs?tail=&follow=`      | the lines, as text (streamed when following) |
//! | `POST /modules/{m}/restart`                | [`Restarted`]                              |
//! | `GET /stats`                               | [`Stats`]                                  |
//! | `GET /support-bundle`                      | the bundle, `application/gzip`             |
//! | `GET /daemon-logs?tail=`                   | the daemon's recent log lines, as text, secrets redacted |
//!
//! Every refusal is an [`ErrorResponse`]. A missing field is an error: what the daemon does not know is sent as
//! `null`, never left out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use outpost_core::workload_api::ErrorResponse;

/// The version of this contract; every request names it in its [`MANAGEMENT_VERSION_PARAM`], and the daemon
/// refuses any other (or none) with a 400.
pub const MANAGEMENT_API_VERSION: &str = "2026-12-01";

/// The query parameter that carries [`MANAGEMENT_API_VERSION`].
pub const MANAGEMENT_VERSION_PARAM: &str = "api-version";

/// Why a request's version is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagementVersionError {
    /// The request names no version.
    #[error("the management API version is missing: send {MANAGEMENT_VERSION_PARAM}={MANAGEMENT_API_VERSION}")]
    Missing,
    /// The request names a version this daemon does not speak (a CLI of another release).
    #[error("management API version {0:?} is not supported: this daemon speaks {MANAGEMENT_API_VERSION}")]
    Unsupported(String),
}

/// Checks the version a request names (the value of its [`MANAGEMENT_VERSION_PARAM`], if any).
pub fn check_version(version: Option<&str>) -> Result<(), ManagementVersionError> {
    match version {
        None => Err(ManagementVersionError::Missing),
        Some(MANAGEMENT_API_VERSION) => Ok(()),
        Some(other) => Err(ManagementVersionError::Unsupported(other.to_owned())),
    }
}

/// A request to the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagementRequest<'a> {
    /// `GET /modules`.
    ListModules,
    /// `GET /modules/{module}/logs`.
    Logs {
        /// The module.
        module: &'a str,
        /// Only the last lines.
        tail: Option<usize>,
        /// Keep the answer open and stream new lines.
        follow: bool,
    },
    /// `POST /modules/{module}/restart`.
    Restart {
        /// The module.
        module: &'a str,
    },
    /// `GET /stats`.
    Stats,
    /// `GET /support-bundle`.
    SupportBundle,
    /// `GET /daemon-logs`: the daemon's own recent log lines (see [`crate::daemon_log`]).
    DaemonLogs {
        /// Only the last lines.
        tail: Option<usize>,
    },
}

impl ManagementRequest<'_> {
    /// Its HTTP method.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Restart { .. } => "POST",
            _ => "GET",
        }
    }

    /// Its path and query, with the module id percent-encoded and the API version named.
    pub fn path(&self) -> String {
        let version = format!("{MANAGEMENT_VERSION_PARAM}={MANAGEMENT_API_VERSION}");
        match self {
            Self::ListModules => format!("/modules?{version}"),
            Self::Logs {
                module,
                tail,
                follow,
            } => {
                let tail = tail.map(|n| format!("&tail={n}")).unwrap_or_default();
                format!(
                    "/modules/{}/logs?{version}&follow={follow}{tail}",
                    crate::hub_http::segment(module)
                )
            }
            Self::Restart { module } => format!(
                "/modules/{}/restart?{version}",
                crate::hub_http::segment(module)
            ),
            Self::Stats => format!("/stats?{version}"),
            Self::SupportBundle => format!("/support-bundle?{version}"),
            Self::DaemonLogs { tail } => {
                let tail = tail.map(|n| format!("&tail={n}")).unwrap_or_default();
                format!("/daemon-logs?{version}{tail}")
            }
        }
    }
}

/// A deployed module as the agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSummary {
    /// Its name.
    pub name: String,
    /// `running`, `backoff`, `failed`, ... (`null` before the agent's first report of it).
    #[serde(deserialize_with = "Option::deserialize")]
    pub status: Option<String>,
    /// Why it is in that status.
    #[serde(deserialize_with = "Option::deserialize")]
    pub description: Option<String>,
    /// Its image (Docker) or program path (process runtime).
    #[serde(deserialize_with = "Option::deserialize")]
    pub image: Option<String>,
    /// How often the agent restarted it.
    #[serde(deserialize_with = "Option::deserialize")]
    pub restart_count: Option<u64>,
}

/// The outcome of the last deployment the agent handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredStatus {
    /// 200, or the refusal code (400, 412, 417, 500).
    pub code: u16,
    /// Why, when it was refused.
    pub description: String,
}

/// `GET /modules`: the deployed modules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleList {
    /// The modules, by name.
    pub modules: Vec<ModuleSummary>,
    /// The outcome of the last deployment (`null` before the first).
    #[serde(deserialize_with = "Option::deserialize")]
    pub last_desired_status: Option<DesiredStatus>,
    /// The desired `$version` last handled (`null` before the first).
    #[serde(deserialize_with = "Option::deserialize")]
    pub last_desired_version: Option<u64>,
}

/// `POST /modules/{module}/restart`: the module that was restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarted {
    /// Its name.
    pub restarted: String,
}

/// The store-and-forward counters of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCounters {
    /// Waiting for delivery.
    pub queued: u64,
    /// Sent, not yet acknowledged.
    pub in_flight: u64,
    /// Delivered since the daemon started.
    pub delivered: u64,
    /// Expired (time to live) since the daemon started.
    pub expired: u64,
    /// Dropped (over quota) since the daemon started.
    pub dropped: u64,
    /// Refused for good since the daemon started.
    pub dead_lettered: u64,
}

/// The free-space guard of the message log: below `minFreeBytes`, new messages are refused (`refusing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskCounters {
    /// Free bytes on the log's file system (`null` when unknown).
    #[serde(deserialize_with = "Option::deserialize")]
    pub free_bytes: Option<u64>,
    /// Its size (`null` when unknown).
    #[serde(deserialize_with = "Option::deserialize")]
    pub total_bytes: Option<u64>,
    /// The guard's threshold.
    pub min_free_bytes: u64,
    /// Whether new messages are refused now.
    pub refusing: bool,
}

/// `GET /stats`: what `outpost edge stats` prints (and the support bundle holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Whether the hub answered the last call.
    pub online: bool,
    /// Messages appended to the log since the daemon started.
    pub appended: u64,
    /// Messages waiting, over every endpoint.
    pub queued: u64,
    /// Delivered since the daemon started.
    pub delivered: u64,
    /// Expired since the daemon started.
    pub expired: u64,
    /// Dropped since the daemon started.
    pub dropped: u64,
    /// The log's size on disk.
    pub disk_bytes: u64,
    /// Messages the hub refused for good, since the store was created (each reason is in the log).
    pub dead_lettered: u64,
    /// Reported patches waiting for the hub.
    pub reported_backlog: u64,
    /// Reported patches the hub refused for good, since the store was created.
    pub reported_dead_lettered: u64,
    /// Per endpoint.
    pub endpoints: BTreeMap<String, EndpointCounters>,
    /// The free-space guard.
    pub disk: DiskCounters,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_name_the_version_and_encode_the_module() {
        assert_eq!(
            ManagementRequest::Restart { module: "$edgeHub" }.path(),
            format!("/modules/%24edgeHub/restart?api-version={MANAGEMENT_API_VERSION}")
        );
        assert_eq!(
            ManagementRequest::Logs {
                module: "filter",
                tail: Some(5),
                follow: true
            }
            .path(),
            format!("/modules/filter/logs?api-version={MANAGEMENT_API_VERSION}&follow=true&tail=5")
        );
        assert_eq!(
            ManagementRequest::DaemonLogs { tail: Some(50) }.path(),
            format!("/daemon-logs?api-version={MANAGEMENT_API_VERSION}&tail=50")
        );
        assert_eq!(ManagementRequest::DaemonLogs { tail: None }.method(), "GET");
        assert_eq!(ManagementRequest::Restart { module: "m" }.method(), "POST");
        assert_eq!(ManagementRequest::Stats.method(), "GET");
    }

    #[test]
    fn the_version_is_checked() {
        assert_eq!(check_version(Some(MANAGEMENT_API_VERSION)), Ok(()));
        assert_eq!(check_version(None), Err(ManagementVersionError::Missing));
        assert!(matches!(
            check_version(Some("2020-01-01")),
            Err(ManagementVersionError::Unsupported(v)) if v == "2020-01-01"
        ));
    }

    #[test]
    fn a_module_list_round_trips_with_nulls_and_refuses_missing_fields() {
        let wire = json!({
            "modules": [{"name": "filter", "status": "running", "description": null,
                         "image": "/bin/filter", "restartCount": 2}],
            "lastDesiredStatus": {"code": 200, "description": ""},
            "lastDesiredVersion": null,
        });
        let list: ModuleList = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(list.modules[0].restart_count, Some(2));
        assert_eq!(serde_json::to_value(&list).unwrap(), wire);
        assert!(serde_json::from_value::<ModuleSummary>(json!({"status": "running"})).is_err());
        let mut without_image = wire["modules"][0].clone();
        without_image.as_object_mut().unwrap().remove("image");
        assert!(serde_json::from_value::<ModuleSummary>(without_image).is_err());
        assert!(serde_json::from_value::<ModuleList>(json!({"lastDesiredVersion": 1})).is_err());
        assert!(serde_json::from_value::<Restarted>(json!({})).is_err());
    }

    #[test]
    fn stats_round_trip_and_refuse_missing_fields() {
        let wire = json!({
            "online": true, "appended": 3, "queued": 1, "delivered": 2, "expired": 0, "dropped": 0,
            "diskBytes": 4096, "deadLettered": 0, "reportedBacklog": 0, "reportedDeadLettered": 0,
            "endpoints": {"upstream": {"queued": 1, "inFlight": 0, "delivered": 2, "expired": 0,
                                       "dropped": 0, "deadLettered": 0}},
            "disk": {"freeBytes": null, "totalBytes": null, "minFreeBytes": 1024, "refusing": false},
        });
        let stats: Stats = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(stats.endpoints["upstream"].queued, 1);
        assert_eq!(serde_json::to_value(&stats).unwrap(), wire);
        let mut missing = wire;
        missing.as_object_mut().unwrap().remove("online");
        assert!(serde_json::from_value::<Stats>(missing).is_err());
    }
}
