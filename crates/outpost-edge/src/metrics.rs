//! The edge daemon's Prometheus metrics (`[metrics] listen = "ADDR:9600"`), with Azure IoT Edge's names and
//! labels where Azure has them (its `doc/BuiltInMetrics.md`), so that existing dashboards work, plus the message
//! store's own counters. Every name and label value is here; the code where an event happens records it with
//! one call.
//!
//! Label values are bounded: client ids of identities that authenticated (the device's modules and children),
//! endpoint and input names from the deployment's routes, module names from the deployment, and module output
//! names, which a module chooses freely, kept for the first [`MAX_OUTPUT_LABELS`] seen and `other` after.
//! Every series carries Azure's `iothub`, `edge_device` and `instance_number` (a fresh GUID each start).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Label;
use outpost_https::metrics::{Distributions, Registry};

use crate::config::EdgeConfig;
use crate::edgehub::EdgeHub;

/// Messages received from clients, by `route_output` and `id` (the sender).
pub const MESSAGES_RECEIVED: &str = "edgehub_messages_received_total";
/// Messages sent to the hub or to module inputs, by `from`, `to`, `from_route_output`, `to_route_input`.
pub const MESSAGES_SENT: &str = "edgehub_messages_sent_total";
/// Messages waiting per endpoint (`$upstream`, each module input), by `endpoint`.
pub const QUEUE_LENGTH: &str = "edgehub_queue_length";
/// How long sending a message to the hub took (its batch's round trip), a summary like Azure's.
pub const MESSAGE_SEND_DURATION: &str = "edgehub_message_send_duration_seconds";
/// Times the edge hub lost the hub, by `id`.
pub const OFFLINE_COUNT: &str = "edgehub_offline_count_total";
/// GetTwin calls of clients, by `source` and `id`.
pub const GET_TWIN: &str = "edgehub_gettwin_total";
/// Reported-property updates of clients, by `target` and `id`.
pub const REPORTED_PROPERTIES: &str = "edgehub_reported_properties_total";
/// Times the agent started a module, by `module_name` and `module_version`.
pub const MODULE_START: &str = "edgeAgent_module_start_total";
/// Times the agent stopped a module, by `module_name` and `module_version`.
pub const MODULE_STOP: &str = "edgeAgent_module_stop_total";
/// Size of the file system holding the data directory, by `disk_name` and `disk_filesystem`.
pub const TOTAL_DISK_SPACE: &str = "edgeAgent_total_disk_space_bytes";
/// Space left for the daemon on that file system.
pub const AVAILABLE_DISK_SPACE: &str = "edgeAgent_available_disk_space_bytes";
/// Memory used, by `module_name` (`host`: the machine; `edgeAgent`: the daemon, edge hub included).
pub const USED_MEMORY: &str = "edgeAgent_used_memory_bytes";
/// Memory available in all, by `module_name`.
pub const TOTAL_MEMORY: &str = "edgeAgent_total_memory_bytes";
/// Records appended to the message log since the daemon started.
pub const STORE_APPENDED: &str = "outpost_edgehub_store_appended_total";
/// Messages acknowledged by their endpoint since the daemon started, by `endpoint`.
pub const STORE_DELIVERED: &str = "outpost_edgehub_store_delivered_total";
/// Messages skipped because their time to live passed, by `endpoint`.
pub const STORE_EXPIRED: &str = "outpost_edgehub_store_expired_total";
/// Messages deleted by the `drop-oldest` policy of a full log, by `endpoint`.
pub const STORE_DROPPED: &str = "outpost_edgehub_store_dropped_total";
/// Messages the hub refused by themselves, by `endpoint`.
pub const STORE_DEAD_LETTERED: &str = "outpost_edgehub_store_dead_lettered_total";
/// Bytes of the message log's segment files.
pub const STORE_DISK_BYTES: &str = "outpost_edgehub_store_disk_bytes";
/// Reported-property patches waiting for the hub.
pub const REPORTED_BACKLOG: &str = "outpost_edgehub_reported_backlog";

/// Distinct module output names kept as label values; later ones are counted as `other`.
pub const MAX_OUTPUT_LABELS: usize = 64;

/// Azure's quantiles for its summaries.
const QUANTILES: &[f64] = &[0.1, 0.5, 0.9, 0.99];

/// The daemon's metrics; records nothing unless `[metrics] listen` is set.
#[derive(Clone, Default)]
pub struct EdgeMetrics {
    registry: Registry,
    /// Output names in use as label values (see [`MAX_OUTPUT_LABELS`]). A std `Mutex`: held for one lookup.
    outputs: Arc<Mutex<BTreeSet<String>>>,
    /// This edge hub's own id (`{device}/$edgeHub`).
    own_id: Arc<str>,
}

/// Why the metrics the settings ask for cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsSetupError {
    /// The connection string (its hub and device label every series).
    #[error(transparent)]
    Settings(#[from] crate::config::SettingsError),
    /// The registry refused its labels.
    #[error(transparent)]
    Registry(#[from] outpost_https::metrics::MetricsError),
}

impl EdgeMetrics {
    /// The metrics the settings ask for.
    pub fn new(config: &EdgeConfig) -> Result<Self, MetricsSetupError> {
        let device = config.device()?;
        let registry = if config.metrics.listen.is_some() {
            Registry::new(
                &[
                    ("iothub", device.hub_hostname.clone()),
                    ("edge_device", device.device_id.clone()),
                    ("instance_number", uuid::Uuid::new_v4().to_string()),
                ],
                Distributions::Quantiles(QUANTILES),
            )?
        } else {
            Registry::disabled()
        };
        Ok(Self {
            registry,
            outputs: Arc::default(),
            own_id: format!("{}/$edgeHub", device.device_id).into(),
        })
    }

    /// The registry (for the listener).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The label value of an output name: bounded, see [`MAX_OUTPUT_LABELS`].
    fn output(&self, output: Option<&str>) -> String {
        let Some(output) = output else {
            return String::new();
        };
        let mut outputs = self
            .outputs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if outputs.contains(output) {
            return output.to_owned();
        }
        if outputs.len() < MAX_OUTPUT_LABELS {
            outputs.insert(output.to_owned());
            return output.to_owned();
        }
        "other".to_owned()
    }

    /// Whether anything is recorded: callers skip preparing labels when not.
    pub fn is_enabled(&self) -> bool {
        self.registry.is_enabled()
    }

    /// A client's message was stored (its PUBACK may go).
    pub fn message_received(&self, client: &str, output: Option<&str>) {
        // Labels cost a few allocations and a lock: none on every message when nothing is recorded.
        if !self.registry.is_enabled() {
            return;
        }
        self.registry
            .counter(
                MESSAGES_RECEIVED,
                vec![
                    Label::new("route_output", self.output(output)),
                    Label::new("id", client.to_owned()),
                ],
            )
            .increment(1);
    }

    fn sent_labels(&self, from: &str, output: Option<&str>, to: &str, input: &str) -> Vec<Label> {
        vec![
            Label::new("from", from.to_owned()),
            Label::new("to", to.to_owned()),
            Label::new("from_route_output", self.output(output)),
            Label::new("to_route_input", input.to_owned()),
        ]
    }

    /// The hub stored these messages (`(sender, output)` each), sent in one request that took `elapsed`.
    pub fn sent_upstream<'a>(
        &self,
        messages: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
        elapsed: Duration,
    ) {
        if !self.registry.is_enabled() {
            return;
        }
        for (from, output) in messages {
            let labels = self.sent_labels(from, output, crate::edgehub::router::UPSTREAM, "");
            self.registry
                .histogram(MESSAGE_SEND_DURATION, labels.clone())
                .record(elapsed);
            self.registry.counter(MESSAGES_SENT, labels).increment(1);
        }
    }

    /// A message from `from` went to the input `input` of the client `to`.
    pub fn sent_to_input(&self, from: &str, output: Option<&str>, to: &str, input: &str) {
        if !self.registry.is_enabled() {
            return;
        }
        self.registry
            .counter(MESSAGES_SENT, self.sent_labels(from, output, to, input))
            .increment(1);
    }

    /// The edge hub lost the hub.
    pub fn went_offline(&self) {
        self.registry
            .counter(
                OFFLINE_COUNT,
                vec![Label::new("id", self.own_id.to_string())],
            )
            .increment(1);
    }

    /// A client read its twin.
    pub fn get_twin(&self, client: &str) {
        self.registry
            .counter(
                GET_TWIN,
                vec![
                    Label::new("source", "downstream"),
                    Label::new("id", client.to_owned()),
                ],
            )
            .increment(1);
    }

    /// A client's reported patch was accepted (and queued for the hub).
    pub fn reported_properties(&self, client: &str) {
        self.registry
            .counter(
                REPORTED_PROPERTIES,
                vec![
                    Label::new("target", "upstream"),
                    Label::new("id", client.to_owned()),
                ],
            )
            .increment(1);
    }

    fn module_labels(name: &str, version: Option<&str>) -> Vec<Label> {
        vec![
            Label::new("module_name", name.to_owned()),
            Label::new("module_version", version.unwrap_or_default().to_owned()),
        ]
    }

    /// The agent started a module (created and started, started, or restarted by its policy).
    pub fn module_started(&self, name: &str, version: Option<&str>) {
        self.registry
            .counter(MODULE_START, Self::module_labels(name, version))
            .increment(1);
    }

    /// The agent stopped a module.
    pub fn module_stopped(&self, name: &str, version: Option<&str>) {
        self.registry
            .counter(MODULE_STOP, Self::module_labels(name, version))
            .increment(1);
    }

    /// Sets what is read from state rather than counted as it happens; called before each scrape.
    pub fn sample(&self, hub: &EdgeHub, data_dir: &Path) {
        let stats = hub.router.log().stats();
        self.registry
            .counter(STORE_APPENDED, Vec::new())
            .absolute(stats.appended);
        self.registry
            .gauge(STORE_DISK_BYTES, Vec::new())
            .set(stats.bytes_on_disk as f64);
        for (endpoint, e) in &stats.endpoints {
            let label = || vec![Label::new("endpoint", endpoint.clone())];
            self.registry
                .gauge(QUEUE_LENGTH, label())
                .set(e.queued as f64);
            for (name, value) in [
                (STORE_DELIVERED, e.delivered),
                (STORE_EXPIRED, e.expired),
                (STORE_DROPPED, e.dropped),
                (STORE_DEAD_LETTERED, e.dead_lettered),
            ] {
                self.registry.counter(name, label()).absolute(value);
            }
        }
        if let Ok(backlog) = hub.store.reported_backlog() {
            self.registry
                .gauge(REPORTED_BACKLOG, Vec::new())
                .set(backlog as f64);
        }
        self.sample_disk(data_dir);
        self.sample_memory();
    }

    fn sample_disk(&self, data_dir: &Path) {
        let Ok(fs) = rustix::fs::statvfs(data_dir) else {
            return;
        };
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let (name, filesystem) = mount_of(&mounts, data_dir).unwrap_or_default();
        let labels = || {
            vec![
                Label::new("disk_name", name.clone()),
                Label::new("disk_filesystem", filesystem.clone()),
            ]
        };
        self.registry
            .gauge(TOTAL_DISK_SPACE, labels())
            .set((fs.f_blocks * fs.f_frsize) as f64);
        self.registry
            .gauge(AVAILABLE_DISK_SPACE, labels())
            .set((fs.f_bavail * fs.f_frsize) as f64);
    }

    fn sample_memory(&self) {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        if let (Some(total), Some(available)) = (
            kib_field(&meminfo, "MemTotal:"),
            kib_field(&meminfo, "MemAvailable:"),
        ) {
            let host = || vec![Label::new("module_name", "host")];
            self.registry
                .gauge(TOTAL_MEMORY, host())
                .set((total * 1024) as f64);
            self.registry
                .gauge(USED_MEMORY, host())
                .set((total.saturating_sub(available) * 1024) as f64);
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            if let Some(rss) = kib_field(&status, "VmRSS:") {
                let daemon = || vec![Label::new("module_name", "edgeAgent")];
                self.registry
                    .gauge(USED_MEMORY, daemon())
                    .set((rss * 1024) as f64);
                self.registry
                    .gauge(TOTAL_MEMORY, daemon())
                    .set((total * 1024) as f64);
            }
        }
    }
}

/// A `Name:   123 kB` field of `/proc/meminfo` or `/proc/self/status`, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The device (its last path component, `sda1`) and file system type of the mount holding `path`, from the
/// text of `/proc/self/mounts`: the longest mount point that is a prefix of it.
fn mount_of(mounts: &str, path: &Path) -> Option<(String, String)> {
    let path = path.canonicalize().unwrap_or_else(|_| PathBuf::from(path));
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let point = fields.next()?.replace("\\040", " ");
            let filesystem = fields.next()?;
            path.starts_with(&point)
                .then_some((point.len(), device, filesystem))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, device, filesystem)| {
            let name = device.rsplit('/').next().unwrap_or(device);
            (name.to_owned(), filesystem.to_owned())
        })
}

/// Serves `/metrics` for the daemon on `listener`, until the task is aborted.
pub async fn serve(
    hub: Arc<EdgeHub>,
    certificates: Arc<outpost_pki::CertificateRenewal>,
    data_dir: PathBuf,
    listener: tokio::net::TcpListener,
) {
    let metrics = hub.metrics.clone();
    outpost_https::metrics::serve(
        listener,
        metrics.registry().clone(),
        move || {
            metrics.sample(&hub, &data_dir);
            metrics
                .registry()
                .certificate_expiries(&certificates.expiries());
        },
        std::future::pending(),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> EdgeMetrics {
        EdgeMetrics {
            registry: Registry::new(
                &[("edge_device", "edge-1".into())],
                Distributions::Quantiles(QUANTILES),
            )
            .unwrap(),
            outputs: Arc::default(),
            own_id: "edge-1/$edgeHub".into(),
        }
    }

    #[test]
    fn output_names_past_the_limit_are_counted_as_other() {
        let metrics = enabled();
        for n in 0..MAX_OUTPUT_LABELS {
            assert_eq!(metrics.output(Some(&format!("out{n}"))), format!("out{n}"));
        }
        assert_eq!(metrics.output(Some("one-too-many")), "other");
        assert_eq!(metrics.output(Some("out0")), "out0");
        assert_eq!(metrics.output(None), "");
    }

    #[test]
    fn azure_names_and_labels_are_rendered() {
        let metrics = enabled();
        metrics.message_received("edge-1/sensor", Some("temperatureOutput"));
        metrics.sent_upstream(
            [("edge-1/sensor", Some("temperatureOutput"))],
            Duration::from_millis(5),
        );
        metrics.module_started("sensor", Some("1.0"));
        let text = metrics.registry().render();
        assert!(text.contains(r#"edgehub_messages_received_total{edge_device="edge-1",route_output="temperatureOutput",id="edge-1/sensor"} 1"#), "{text}");
        assert!(text.contains(r#"to="$upstream""#), "{text}");
        assert!(
            text.contains("edgehub_message_send_duration_seconds_count"),
            "{text}"
        );
        assert!(text.contains(r#"edgeAgent_module_start_total{edge_device="edge-1",module_name="sensor",module_version="1.0"} 1"#), "{text}");
    }

    #[test]
    fn the_mount_holding_a_path_is_the_longest_prefix() {
        let mounts = "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /var/lib ext4 rw 0 0\ntmpfs /var/lib/x tmpfs rw 0 0\n";
        assert_eq!(
            mount_of(mounts, Path::new("/var/lib/outpost")),
            Some(("sdb1".into(), "ext4".into()))
        );
        assert_eq!(
            mount_of(mounts, Path::new("/home")),
            Some(("sda1".into(), "ext4".into()))
        );
    }

    #[test]
    fn meminfo_fields_are_read_in_kib() {
        let meminfo = "MemTotal:       16314436 kB\nMemAvailable:    9876543 kB\n";
        assert_eq!(kib_field(meminfo, "MemTotal:"), Some(16_314_436));
        assert_eq!(kib_field(meminfo, "MemFree:"), None);
    }
}
