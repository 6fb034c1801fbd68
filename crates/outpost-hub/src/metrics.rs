//! The hub's Prometheus metrics (`outpost hub serve --metrics-bind ADDR:PORT`): every name and every label value
//! is here, so that the code where an event happens records it with one call and cannot invent a series.
//!
//! Label values are bounded by construction: enums, route templates (never a raw path) and HTTP status codes.
//! No label carries a device id: a hub serves millions of them, a time series each would not be.

use std::sync::Arc;
use std::time::Duration;

use metrics::Label;
use outpost_https::metrics::{Distributions, MetricsError, Registry};

use crate::Hub;

/// Identities (devices and modules) connected now, directly over MQTT or behind an edge device's link.
pub const CONNECTED_DEVICES: &str = "outpost_hub_connected_devices";
/// Device-to-cloud messages appended to the event stream, by `via` (`mqtt`, `edge`).
pub const TELEMETRY_MESSAGES: &str = "outpost_hub_telemetry_messages_total";
/// Cloud-to-device messages, by `outcome`: `queued` by the service, `completed` by the device's acknowledgement.
pub const C2D_MESSAGES: &str = "outpost_hub_c2d_messages_total";
/// Twin operations that succeeded, by `operation` and `source` (`service`, `device`, `edge`).
pub const TWIN_OPERATIONS: &str = "outpost_hub_twin_operations_total";
/// Direct method calls from the service, by `outcome`.
pub const METHOD_CALLS: &str = "outpost_hub_method_calls_total";
/// REST requests served, by `method`, `route` (the template, `/twins/{device}`) and `status`.
pub const REST_REQUEST_DURATION: &str = "outpost_hub_rest_request_duration_seconds";
/// Durable writes to `hub.sqlite`: from taking the database to the commit's fsync returning.
pub const STORAGE_COMMIT_DURATION: &str = "outpost_hub_storage_commit_duration_seconds";

/// Histogram buckets, in seconds: from a single fsync to a long poll's or a method call's wait.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// How a device-to-cloud message reached the hub.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// The hub's own MQTT head.
    Mqtt,
    /// An edge device's upstream link.
    Edge,
}

/// What happened to a cloud-to-device message.
#[derive(Debug, Clone, Copy)]
pub enum C2dOutcome {
    /// The service queued it.
    Queued,
    /// The device acknowledged it.
    Completed,
    /// Its expiry time passed before the device took it.
    Expired,
}

/// A twin operation.
#[derive(Debug, Clone, Copy)]
pub enum TwinOperation {
    /// A read of a whole twin.
    Read,
    /// A desired-properties (or tags) patch.
    UpdateDesired,
    /// A replacement of desired properties and tags.
    Replace,
    /// A reported-properties patch.
    UpdateReported,
    /// A deployment applied to an edge device's module twins.
    ApplyConfiguration,
}

/// Who asked for a twin operation.
#[derive(Debug, Clone, Copy)]
pub enum TwinSource {
    /// The service API.
    Service,
    /// A device or module over MQTT.
    Device,
    /// An edge device's link, for itself or a client behind it.
    Edge,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Edge => "edge",
        }
    }
}

impl C2dOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Completed => "completed",
            Self::Expired => "expired",
        }
    }
}

impl TwinOperation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::UpdateDesired => "update_desired",
            Self::Replace => "replace",
            Self::UpdateReported => "update_reported",
            Self::ApplyConfiguration => "apply_configuration",
        }
    }
}

impl TwinSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Device => "device",
            Self::Edge => "edge",
        }
    }
}

/// The outcome label of a method call's result.
fn method_outcome<T>(result: &Result<T, crate::HubError>) -> &'static str {
    use crate::HubError;
    match result {
        Ok(_) => "answered",
        Err(HubError::GatewayTimeout(_)) => "timeout",
        Err(HubError::DeviceNotOnline(_)) => "not_online",
        Err(HubError::Throttled(_)) => "throttled",
        Err(_) => "refused",
    }
}

/// The hub's metrics; records nothing unless built with [`HubMetrics::new`].
#[derive(Clone, Default)]
pub struct HubMetrics(Registry);

impl HubMetrics {
    /// Metrics that record, each series labelled with the hub's host name (`iothub`).
    pub fn new(host_name: &str) -> Result<Self, MetricsError> {
        Ok(Self(Registry::new(
            &[("iothub", host_name.to_owned())],
            Distributions::Buckets(BUCKETS),
        )?))
    }

    /// The registry (for the listener).
    pub fn registry(&self) -> &Registry {
        &self.0
    }

    /// A storage transaction committed in `elapsed` (the commit's fsync is most of it).
    pub(crate) fn storage_commit(&self, elapsed: std::time::Duration) {
        self.0
            .histogram(STORAGE_COMMIT_DURATION, Vec::new())
            .record(elapsed);
    }

    /// `count` device-to-cloud messages were appended to the event stream.
    pub(crate) fn telemetry(&self, via: Via, count: u64) {
        self.0
            .counter(TELEMETRY_MESSAGES, vec![Label::new("via", via.as_str())])
            .increment(count);
    }

    /// A cloud-to-device message was queued or completed.
    pub(crate) fn c2d(&self, outcome: C2dOutcome) {
        self.0
            .counter(C2D_MESSAGES, vec![Label::new("outcome", outcome.as_str())])
            .increment(1);
    }

    /// A twin operation succeeded.
    pub(crate) fn twin(&self, operation: TwinOperation, source: TwinSource) {
        self.0
            .counter(
                TWIN_OPERATIONS,
                vec![
                    Label::new("operation", operation.as_str()),
                    Label::new("source", source.as_str()),
                ],
            )
            .increment(1);
    }

    /// A direct method call ended with `result`.
    pub(crate) fn method_call<T>(&self, result: &Result<T, crate::HubError>) {
        self.0
            .counter(
                METHOD_CALLS,
                vec![Label::new("outcome", method_outcome(result))],
            )
            .increment(1);
    }

    /// A REST request matched `route` and was answered with `status` after `elapsed`.
    pub(crate) fn rest_request(
        &self,
        method: &http::Method,
        route: &str,
        status: u16,
        elapsed: Duration,
    ) {
        // A matched route can still see any method (answered 405): only the standard ones become labels.
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::PUT => "PUT",
            http::Method::POST => "POST",
            http::Method::PATCH => "PATCH",
            http::Method::DELETE => "DELETE",
            _ => "other",
        };
        self.0
            .histogram(
                REST_REQUEST_DURATION,
                vec![
                    Label::new("method", method),
                    Label::new("route", route.to_owned()),
                    Label::new("status", status.to_string()),
                ],
            )
            .record(elapsed);
    }

    /// Sets the gauges read from the hub's state; called before each scrape.
    pub fn sample(&self, hub: &Hub) {
        let connected = hub.connections().table().len();
        self.0
            .gauge(CONNECTED_DEVICES, Vec::new())
            .set(connected as f64);
    }
}

impl Hub {
    /// The hub recording into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: HubMetrics) -> Self {
        self.storage.writer().set_metrics(metrics.clone());
        self.metrics = metrics;
        self.assemble();
        self
    }

    /// The transactions the storage writer has committed; each carries every write that was waiting, so under
    /// load this grows slower than the writes do.
    pub fn storage_commits(&self) -> u64 {
        self.storage.writer().commits()
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }
}

/// Serves `/metrics` for `hub` on `listener` until `shutdown` resolves.
pub async fn serve(
    hub: Arc<Hub>,
    certificate_expiries: impl Fn() -> Vec<(String, i64)> + Send + Sync + 'static,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let registry = hub.metrics.0.clone();
    outpost_https::metrics::serve(
        listener,
        registry,
        move || {
            hub.metrics.sample(&hub);
            hub.metrics.0.certificate_expiries(&certificate_expiries());
        },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_hub_renders_nothing_and_an_enabled_one_renders_its_series() {
        let hub = Hub::in_memory("hub.example").unwrap();
        hub.metrics.telemetry(Via::Mqtt, 3);
        assert!(hub.metrics.registry().render().is_empty());

        let hub = Hub::in_memory("hub.example")
            .unwrap()
            .with_metrics(HubMetrics::new("hub.example").unwrap());
        hub.metrics.telemetry(Via::Mqtt, 3);
        hub.metrics.sample(&hub);
        let text = hub.metrics.registry().render();
        assert!(
            text.contains(
                r#"outpost_hub_telemetry_messages_total{iothub="hub.example",via="mqtt"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains("outpost_hub_connected_devices"), "{text}");
    }

    #[test]
    fn method_outcomes_name_each_way_a_call_ends() {
        use crate::HubError;
        assert_eq!(method_outcome(&Ok::<(), HubError>(())), "answered");
        assert_eq!(
            method_outcome::<()>(&Err(HubError::GatewayTimeout("d".into()))),
            "timeout"
        );
        assert_eq!(
            method_outcome::<()>(&Err(HubError::DeviceNotOnline("d".into()))),
            "not_online"
        );
    }
}
