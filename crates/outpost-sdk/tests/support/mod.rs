//! Test support shared by the SDK's tests and the sample modules' tests (which include this file by path):
//! a real hub run in-process on its own loopback address, identities made through its API, its event
//! stream, and a test-only gateway (see `gateway`).
#![allow(dead_code)]

pub mod gateway;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outpost_hub::registry::{DeviceSpec, ModuleSpec, Precondition};
use outpost_hub::twins::TwinWrite;
use outpost_hub::{Hub, HubConfig, RunningHub};
use outpost_sdk::ClientOptions;
use serde_json::Value;

/// How long a test waits for something that should happen in well under a second.
pub const WAIT: Duration = Duration::from_secs(20);

/// Installs the process-wide rustls provider the hub needs (the SDK passes its own to each config) and a
/// log subscriber (`RUST_LOG=debug` to see the clients and the hub at work).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A loopback address whose port 8883 is free: 127.N.x.y with N picked per process, so that test binaries
/// running at the same time (and the compat suite, on 127.0.x.y) rarely meet.
pub fn free_loopback() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let net = 100 + (std::process::id() % 150) as u8;
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            net,
            (n / 250 % 250) as u8,
            (n % 250 + 2) as u8,
        ));
        if std::net::TcpListener::bind((ip, 8883)).is_ok() {
            return ip;
        }
    }
    panic!("no loopback address with a free port 8883");
}

/// A hub running in this process, on its own loopback address with MQTT on 8883.
pub struct TestHub {
    pub dir: tempfile::TempDir,
    pub config: HubConfig,
    running: Option<RunningHub>,
    pub ca_pem: String,
}

impl TestHub {
    /// Starts a hub with a fresh data directory.
    pub async fn start() -> Self {
        init();
        let dir = tempfile::tempdir().unwrap();
        let ip = free_loopback();
        let config = HubConfig {
            data_dir: dir.path().join("hub"),
            database: None,
            host_name: ip.to_string(),
            bind: ip,
            mqtt_port: 8883,
            https_port: 0,
            event_retention: outpost_hub::messaging::EventRetention::default(),
            amqp_port: None,
            stream: outpost_hub::eventhub::StreamSettings::default(),
            https_limits: outpost_hub::server::HttpsLimits::default(),
            session_expiry: outpost_hub::server::DEFAULT_SESSION_EXPIRY,
            metrics_bind: None,
            certificates: outpost_hub::server::CertificateLifetimes::default(),
            provisioning: None,
        };
        let running = RunningHub::start(&config).await.expect("the hub starts");
        let ca_pem = std::fs::read_to_string(config.data_dir.join("ca.pem")).unwrap();
        Self {
            dir,
            config,
            running: Some(running),
            ca_pem,
        }
    }

    /// The hub's state (for identities, twins, methods, C2D and the event stream).
    pub fn hub(&self) -> Arc<Hub> {
        Arc::clone(&self.running.as_ref().expect("the hub is running").hub)
    }

    /// The host name clients use (its IP address).
    pub fn host(&self) -> &str {
        &self.config.host_name
    }

    /// The path of the hub's CA certificate.
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.config.data_dir.join("ca.pem")
    }

    /// Client options trusting this hub, with timers short enough for tests.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            ca_pem: Some(self.ca_pem.clone()),
            reconnect_min_delay: Duration::from_millis(200),
            reconnect_max_delay: Duration::from_secs(1),
            operation_timeout: WAIT,
            ..ClientOptions::default()
        }
    }

    /// Creates a device; returns its connection string.
    pub async fn create_device(&self, device: &str) -> String {
        let record = self
            .hub()
            .registry()
            .put_device(
                &DeviceSpec {
                    device_id: device.into(),
                    ..DeviceSpec::default()
                },
                &Precondition::CreateOnly,
            )
            .await
            .unwrap();
        format!(
            "HostName={};DeviceId={device};SharedAccessKey={}",
            self.host(),
            record.credentials.primary_key
        )
    }

    /// Creates a module (and its device if needed); returns its connection string.
    pub async fn create_module(&self, device: &str, module: &str) -> String {
        let hub = self.hub();
        if hub.registry().device(device).await.is_err() {
            self.create_device(device).await;
        }
        let (record, _) = hub
            .registry()
            .put_module(
                ModuleSpec {
                    device_id: device.into(),
                    module_id: module.into(),
                    ..ModuleSpec::default()
                },
                &Precondition::CreateOnly,
            )
            .await
            .unwrap();
        format!(
            "HostName={};DeviceId={device};ModuleId={module};SharedAccessKey={}",
            self.host(),
            record.credentials.primary_key
        )
    }

    /// Patches desired properties the way the service API does (notifying a connected client).
    pub async fn patch_desired(&self, device: &str, module: Option<&str>, patch: Value) {
        let write = TwinWrite {
            desired: Some(patch),
            ..TwinWrite::default()
        };
        self.hub()
            .twins()
            .write_twin(device, module, &write, &Precondition::Any)
            .await
            .unwrap();
    }

    /// The reported properties in the hub.
    pub async fn reported(&self, device: &str, module: Option<&str>) -> Value {
        let view = self.hub().twins().twin(device, module).await.unwrap();
        outpost_hub::twins::twin_json(&view)["properties"]["reported"].clone()
    }

    /// Stops the listeners; connected clients lose their connections.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Patches desired properties while the hub is stopped, in its database (nobody can be notified).
    pub async fn patch_desired_while_stopped(
        &self,
        device: &str,
        module: Option<&str>,
        patch: Value,
    ) {
        assert!(self.running.is_none(), "the hub must be stopped");
        let hub = Hub::open(&self.config.data_dir, &self.config.host_name).unwrap();
        let write = TwinWrite {
            desired: Some(patch),
            ..TwinWrite::default()
        };
        hub.twins()
            .write_twin(device, module, &write, &Precondition::Any)
            .await
            .unwrap();
    }

    /// Starts the hub again on the same address and data.
    pub async fn start_again(&mut self) {
        assert!(self.running.is_none(), "the hub is already running");
        // The old listener's port can take a moment to be free again.
        for attempt in 0.. {
            match RunningHub::start(&self.config).await {
                Ok(running) => {
                    self.running = Some(running);
                    return;
                }
                Err(error) if attempt < 50 => {
                    tracing::debug!(%error, "hub restart: retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("the hub does not start again: {error}"),
            }
        }
    }

    /// The sequence number of the newest device-to-cloud event.
    pub fn newest_event(&self) -> i64 {
        self.hub().messaging().newest_event()
    }

    /// Events after `after` until one matches `found`, failing after [`WAIT`].
    pub async fn wait_for_event(&self, after: i64, found: impl Fn(&Value) -> bool) -> Value {
        let hub = self.hub();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut after = after;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "no matching event within {WAIT:?}");
            for (seq, event) in hub.messaging().read_events(after, 100, left).await.unwrap() {
                after = seq;
                if found(&event) {
                    return event;
                }
            }
        }
    }

    /// Every event after `after` that arrives within `wait`.
    pub async fn events_within(&self, after: i64, wait: Duration) -> Vec<Value> {
        tokio::time::sleep(wait).await;
        self.hub()
            .messaging()
            .read_events(after, 10_000, Duration::ZERO)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, event)| event)
            .collect()
    }
}

/// Waits for `future` at most [`WAIT`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A sample module run as a process, the way the edge runtime runs a process module; killed on drop. Its
/// log goes to a file that is printed if the test fails.
pub struct ModuleProcess {
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl ModuleProcess {
    /// Starts `binary` with a module connection string and the CA to trust, through the variables the
    /// Azure SDK reads outside an edge runtime (`EdgeHubConnectionString`, `EdgeModuleCACertificateFile`).
    pub fn start(
        binary: &str,
        connection_string: &str,
        ca_file: &std::path::Path,
        log_dir: &std::path::Path,
    ) -> Self {
        let name = std::path::Path::new(binary)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let log = log_dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = tokio::process::Command::new(binary);
        for variable in outpost_sdk::RUNTIME_VARIABLES {
            command.env_remove(variable);
        }
        let child = command
            .env("EdgeHubConnectionString", connection_string)
            .env("EdgeModuleCACertificateFile", ca_file)
            .env("RUST_LOG", "info,outpost_sdk=debug")
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// Sends SIGTERM (what `docker stop` and the edge runtime send) and returns the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the module is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        within("the module to exit", self.child.wait())
            .await
            .unwrap()
    }

    /// Waits for the process to exit on its own.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        within("the module to exit", self.child.wait())
            .await
            .unwrap()
    }

    /// The module's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ModuleProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- module log {} ----\n{log}", self.log.display());
        }
    }
}

/// Polls `check` every 100 ms until it holds, failing after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}
