//! `outpost-bench edge`: the edge daemon's figures, on one hub and one edge daemon started for the run.
//!
//! In order: the idle footprint with the two sample modules deployed; routed throughput and latency (N
//! publisher modules → routes → M subscriber modules, QoS 1, through the durable store) next to the same
//! clients against mosquitto; a soak at a fixed rate sampling the daemon's memory; the offline backlog and its
//! drain; and the time from a manifest applied to a module running ([`deploy`]).

mod backlog;
mod deploy;
mod manifest;
mod routed;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Map;

use crate::device::DeviceCredentials;
use crate::edge_process::EdgeProcess;
use crate::hub_process::HubProcess;
use crate::loadgen::{Broker, Login};
use crate::mosquitto::Mosquitto;
use crate::report::{Part, Section, Table};
use crate::service::ServiceApi;
use crate::{Bench, Profile};

use routed::{ms, ratio, Load, PhaseFigures, Target};

/// The low paced load of every target: the latency floor.
const LOW_RATE: f64 = 1000.0;

/// Module tokens live this long: longer than any run.
const TOKEN_TTL_SECS: u64 = 4 * 3600;

/// Options of `outpost-bench edge`; each one left out takes the profile's default.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EdgeArgs {
    /// The long profile: a 1,000,000-message backlog and a 10-minute soak.
    #[arg(long)]
    pub full: bool,
    /// Publisher modules [default: 4].
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscriber modules [default: 2].
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Seconds of each throughput phase [default: 8; --quick: 2].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Unacknowledged publishes per publisher at maximum load [default: 64].
    #[arg(long)]
    pub window: Option<usize>,
    /// Messages per second of the soak [default: 10000].
    #[arg(long)]
    pub soak_rate: Option<u32>,
    /// Seconds of the soak [default: 90; --full: 600; --quick: 10].
    #[arg(long)]
    pub soak: Option<u64>,
    /// Messages queued while the hub is down [default: 200000; --full: 1000000; --quick: 5000].
    #[arg(long)]
    pub backlog: Option<u64>,
    /// Skip the comparison with mosquitto.
    #[arg(long)]
    pub skip_mosquitto: bool,
    /// Skip the container deployment case.
    #[arg(long)]
    pub skip_docker: bool,
}

/// The parameters of a run, resolved against the profile.
#[derive(Debug, Clone)]
pub struct EdgeParams {
    publishers: usize,
    subscribers: usize,
    duration: Duration,
    window: usize,
    soak_rate: u32,
    soak: Duration,
    backlog: u64,
    sizes: Vec<usize>,
}

impl EdgeArgs {
    fn params(&self, profile: Profile) -> anyhow::Result<EdgeParams> {
        let quick = profile == Profile::Quick;
        let params = EdgeParams {
            publishers: self.publishers.unwrap_or(4),
            subscribers: self.subscribers.unwrap_or(2),
            duration: Duration::from_secs(self.duration.unwrap_or(if quick { 2 } else { 8 })),
            window: self.window.unwrap_or(64),
            soak_rate: self.soak_rate.unwrap_or(10_000),
            soak: Duration::from_secs(self.soak.unwrap_or(match (quick, self.full) {
                (true, _) => 10,
                (false, true) => 600,
                (false, false) => 90,
            })),
            backlog: self.backlog.unwrap_or(match (quick, self.full) {
                (true, _) => 5_000,
                (false, true) => 1_000_000,
                (false, false) => 200_000,
            }),
            sizes: vec![100, 4096],
        };
        if params.publishers == 0 || params.subscribers == 0 || params.window == 0 {
            bail!("--publishers, --subscribers and --window must be at least 1");
        }
        Ok(params)
    }
}

/// The run's hub, edge daemon and module credentials.
struct Setup {
    hub: HubProcess,
    api: Arc<ServiceApi>,
    edge: EdgeProcess,
    publishers: Vec<DeviceCredentials>,
    subscribers: Vec<DeviceCredentials>,
    backlog: DeviceCredentials,
    base_modules: Map<String, serde_json::Value>,
    routes: Map<String, serde_json::Value>,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn module_login(&self, module: &DeviceCredentials) -> anyhow::Result<Login> {
        let host = self.hub.host();
        let edge = &self.edge.device.id;
        let expiry = chrono::Utc::now().timestamp().max(0) as u64 + TOKEN_TTL_SECS;
        let token = outpost_core::module_token(&host, edge, &module.id, &module.key, expiry)
            .map_err(|e| anyhow::anyhow!("cannot sign a module token: {e}"))?;
        Ok(Login {
            client_id: format!("{edge}/{}", module.id),
            username: Some(format!(
                "{host}/{edge}/{}/?api-version=2021-04-12",
                module.id
            )),
            password: Some(token),
        })
    }

    fn edge_broker(&self) -> anyhow::Result<Broker> {
        let pem = std::fs::read(self.edge.ca_pem())?;
        Ok(Broker {
            addr: self.edge.mqtt_addr(),
            tls: Some((Broker::tls_config(&pem)?, self.edge.settings.ip.to_string())),
        })
    }

    fn outpost_target(&self) -> anyhow::Result<Target> {
        let edge = &self.edge.device.id;
        let mut publishers = Vec::new();
        for module in &self.publishers {
            let topic = format!(
                "devices/{edge}/modules/{}/messages/events/%24.on=out1",
                module.id
            );
            publishers.push((self.module_login(module)?, topic));
        }
        let mut subscribers = Vec::new();
        for module in &self.subscribers {
            let filter = format!("devices/{edge}/modules/{}/inputs/#", module.id);
            subscribers.push((self.module_login(module)?, filter));
        }
        Ok(Target {
            name: "Outpost edge hub, TLS, durable".into(),
            broker: self.edge_broker()?,
            publishers,
            subscribers,
        })
    }
}

/// The same clients on mosquitto: publisher i to topic `bench/{i mod M}`, subscriber j on `bench/j`.
fn mosquitto_target(broker: Broker, name: &str, publishers: usize, subscribers: usize) -> Target {
    let login = |id: String| Login {
        client_id: id,
        username: None,
        password: None,
    };
    Target {
        name: name.to_owned(),
        broker,
        publishers: (0..publishers)
            .map(|i| {
                (
                    login(format!("pub{i}")),
                    format!("bench/{}", i % subscribers),
                )
            })
            .collect(),
        subscribers: (0..subscribers)
            .map(|j| (login(format!("sub{j}")), format!("bench/{j}")))
            .collect(),
    }
}

async fn setup(bench: &Bench, params: &EdgeParams) -> anyhow::Result<Setup> {
    let hub = HubProcess::start(&bench.outpost).await?;
    eprintln!("edge: hub pid {} on {}", hub.pid(), hub.host());
    let api = Arc::new(ServiceApi::new(&hub, 8)?);
    let device = api.create_edge_device("bench-edge").await?;
    let mut publishers = Vec::new();
    for i in 1..=params.publishers {
        publishers.push(api.create_module(&device.id, &format!("pub{i}")).await?);
    }
    let mut subscribers = Vec::new();
    for j in 1..=params.subscribers {
        subscribers.push(api.create_module(&device.id, &format!("sub{j}")).await?);
    }
    let backlog = api.create_module(&device.id, "backlog").await?;
    let outpost = std::fs::canonicalize(&bench.outpost)?;
    let bin = outpost.parent().unwrap_or(Path::new("/"));
    let sensor = bin.join("simulated-temperature-sensor");
    let filter = bin.join("filter");
    let samples = sensor.is_file() && filter.is_file();
    let mut base_modules = Map::new();
    if samples {
        base_modules.insert(
            "sensor".into(),
            manifest::process_module(&sensor.display().to_string(), &[]),
        );
        base_modules.insert(
            "filter".into(),
            manifest::process_module(&filter.display().to_string(), &[]),
        );
    } else {
        eprintln!(
            "edge: {} or {} missing (cargo build --release -p simulated-temperature-sensor -p filter): no sample modules",
            sensor.display(),
            filter.display()
        );
    }
    let ids = |m: &[DeviceCredentials]| m.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    let routes = manifest::routes(&ids(&publishers), &ids(&subscribers), samples);
    api.apply_configuration(&device.id, &manifest::manifest(&base_modules, &routes))
        .await?;
    let dir = tempfile::Builder::new()
        .prefix("outpost-bench-edge-")
        .tempdir()?;
    let edge = EdgeProcess::start(&bench.outpost, &hub, device, dir.path(), None, 8192).await?;
    eprintln!("edge: daemon pid {} on {}", edge.pid(), edge.settings.ip);
    let setup = Setup {
        hub,
        api,
        edge,
        publishers,
        subscribers,
        backlog,
        base_modules,
        routes,
        _dir: dir,
    };
    for module in setup.base_modules.keys() {
        deploy::wait_running(
            &setup.api,
            &setup.edge.device.id,
            module,
            Duration::from_secs(90),
        )
        .await
        .with_context(|| format!("sample module {module}: {}", setup.edge.log_tail()))?;
    }
    Ok(setup)
}

/// Runs the edge benchmarks and returns their figures.
pub async fn run(bench: &Bench, args: &EdgeArgs) -> anyhow::Result<Section> {
    let params = args.params(bench.profile)?;
    let setup = setup(bench, &params).await?;
    let mut parts = Vec::new();

    // Footprint, idle: the sample modules run, nothing else.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_kib = setup.edge.rss_kib()?;
    let (idle_anon, idle_file) = crate::system::rss_split_kib(setup.edge.pid())?;
    eprintln!("edge: idle RSS {idle_kib} KiB");

    let outpost = setup.outpost_target()?;
    let mosquitto = if args.skip_mosquitto {
        None
    } else {
        match Mosquitto::start().await {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("edge: mosquitto not measured: {e:#}");
                None
            }
        }
    };
    let mut targets = vec![outpost.clone()];
    if let Some(m) = &mosquitto {
        let plain = Broker {
            addr: m.plain_addr(),
            tls: None,
        };
        let tls = Broker {
            addr: m.tls_addr(),
            tls: Some((
                Broker::tls_config(&std::fs::read(m.ca_pem())?)?,
                m.ip.to_string(),
            )),
        };
        targets.push(mosquitto_target(
            plain,
            "mosquitto, plain TCP, in-memory",
            params.publishers,
            params.subscribers,
        ));
        targets.push(mosquitto_target(
            tls,
            "mosquitto, TLS, in-memory",
            params.publishers,
            params.subscribers,
        ));
    }

    let mut table = Table::new(&[
        "broker",
        "payload",
        "load",
        "acked msg/s",
        "delivered msg/s",
        "Outpost / this",
        "p50",
        "p99",
        "p99.9",
        "sent / acked / delivered",
    ]);
    let mut peak_rss = idle_kib;
    for &size in &params.sizes {
        let mut rows: Vec<(String, String, PhaseFigures)> = Vec::new();
        for target in &targets {
            let max = Load {
                size,
                window: params.window,
                rate: None,
                duration: params.duration,
            };
            eprintln!("edge: {} {size} B, maximum load", target.name);
            let at_max = routed::run_phase(target, max).await?;
            if target.name.starts_with("Outpost") {
                peak_rss = peak_rss.max(setup.edge.rss_kib()?);
            }
            let half_rate = (at_max.rate / 2.0).max(1.0);
            eprintln!(
                "edge: {} {size} B, half load ({half_rate:.0} msg/s)",
                target.name
            );
            let at_half = routed::run_phase(
                target,
                Load {
                    rate: Some(half_rate),
                    ..max
                },
            )
            .await?;
            eprintln!("edge: {} {size} B, {LOW_RATE} msg/s", target.name);
            let low = Load {
                rate: Some(LOW_RATE),
                duration: max.duration.min(Duration::from_secs(4)),
                ..max
            };
            let at_low = routed::run_phase(target, low).await?;
            rows.push((
                target.name.clone(),
                format!("max (window {}×{})", params.window, params.publishers),
                at_max,
            ));
            rows.push((
                target.name.clone(),
                format!("half of max: {half_rate:.0} msg/s paced"),
                at_half,
            ));
            rows.push((
                target.name.clone(),
                format!("{LOW_RATE:.0} msg/s paced"),
                at_low,
            ));
        }
        let outpost_max = rows.first().map_or(0.0, |r| r.2.rate);
        for (name, load, f) in rows {
            let compare = if name.starts_with("Outpost") || !load.starts_with("max") {
                "–".to_owned()
            } else {
                ratio(outpost_max, f.rate)
            };
            let stale = if f.stale > 0 {
                format!(" (+{} stale)", f.stale)
            } else {
                String::new()
            };
            table.row(vec![
                name,
                format!("{size} B"),
                load,
                format!("{:.0}", f.acked_rate),
                format!("{:.0}", f.rate),
                compare,
                ms(f.p50_ns),
                ms(f.p99_ns),
                ms(f.p999_ns),
                format!("{} / {} / {}{stale}", f.sent, f.acked, f.delivered),
            ]);
        }
    }
    let mosquitto_version = mosquitto
        .as_ref()
        .map_or("not run".to_owned(), |m| m.version.clone());
    if let Some(m) = mosquitto {
        m.stop().await;
    }
    parts.push(Part::Heading("Routed throughput and latency".into()));
    parts.push(Part::Text(format!(
        "{} publisher modules → {} routes → {} subscriber modules (publisher i to subscriber i mod {}), QoS 1 both ways, \
         through the edge hub's durable store (a PUBACK goes once the message is in the log). The same bare MQTT 3.1.1 \
         clients (the harness's, on `outpost_mqtt`'s codec) then load {mosquitto_version} (Debian's package, \
         `persistence false`, default limits, publisher i to topic `bench/{{i mod {}}}`). Maximum load: each publisher \
         keeps {} publishes unacknowledged for {:?}; then the same clients paced at half the delivered rate just measured, then at 1,000 msg/s for 4 s. \
         Latency runs from encoding the PUBLISH to the subscriber reading it (one clock, one process). \
         \"Outpost / this\" is Outpost's maximum delivered rate over that broker's, same payload. \
         mosquitto's default `max_queued_messages 1000` drops QoS 1 messages for a subscriber that falls behind: \
         compare acked and delivered.",
        params.publishers, params.publishers, params.subscribers, params.subscribers, params.subscribers,
        params.window, params.duration
    )));
    parts.push(Part::Table(table));

    // Soak: the footprint under load and its growth.
    let soak = footprint_soak(&setup, &outpost, &params).await?;
    parts.push(Part::Heading("Footprint of `outpost edge run`".into()));
    parts.push(Part::Text(format!(
        "`VmRSS` of the daemon process (its modules are processes of their own and not counted). Idle: 5 s after \
         the sample modules ({}) reported running. Soak: 100-byte messages paced at {} msg/s through the routes \
         for {:?}, RSS read every 5 s.",
        if setup.base_modules.is_empty() { "not built, so none".to_owned() } else { "simulated-temperature-sensor → filter → $upstream, process modules".to_owned() },
        params.soak_rate, params.soak
    )));
    let mut table = Table::new(&["figure", "value"]);
    table.row(vec![
        "idle RSS, sample modules deployed".into(),
        format!(
            "{} ({} anonymous, {} file-backed: the binary's pages)",
            mib(idle_kib),
            mib(idle_anon),
            mib(idle_file)
        ),
    ]);
    table.row(vec![
        "peak RSS during the throughput runs".into(),
        mib(peak_rss),
    ]);
    table.row(vec![
        "soak: achieved rate".into(),
        format!("{:.0} msg/s ({} delivered)", soak.rate, soak.delivered),
    ]);
    table.row(vec![
        "soak: latency p50 / p99 / p99.9".into(),
        format!(
            "{} / {} / {}",
            ms(soak.p50_ns),
            ms(soak.p99_ns),
            ms(soak.p999_ns)
        ),
    ]);
    table.row(vec![
        "soak: RSS first / max / last sample".into(),
        format!(
            "{} / {} / {}",
            mib(soak.first_kib),
            mib(soak.max_kib),
            mib(soak.last_kib)
        ),
    ]);
    table.row(vec![
        "soak: growth, last − first".into(),
        format!(
            "{:+.1} MiB over {:?}",
            (soak.last_kib as f64 - soak.first_kib as f64) / 1024.0,
            params.soak
        ),
    ]);
    table.row(vec![
        "RSS samples (MiB, every 5 s)".into(),
        soak.samples
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", "),
    ]);
    parts.push(Part::Table(table));

    let mut setup = setup;
    let drained = backlog::run(bench, &mut setup, params.backlog).await;
    parts.extend(match drained {
        Ok(parts) => parts,
        Err(e) => vec![
            Part::Heading("Offline backlog".into()),
            Part::Text(format!("Failed: {e:#}")),
        ],
    });

    let deployed = deploy::run(bench, &setup, args.skip_docker).await;
    parts.extend(match deployed {
        Ok(parts) => parts,
        Err(e) => vec![
            Part::Heading("Deployment".into()),
            Part::Text(format!("Failed: {e:#}")),
        ],
    });

    let Setup { hub, edge, .. } = setup;
    edge.stop().await;
    hub.stop().await;
    Ok(Section {
        id: "edge",
        title: "Edge: routed messages, footprint, offline backlog, deployment".into(),
        parts,
    })
}

/// The soak's figures.
struct Soak {
    rate: f64,
    delivered: u64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    first_kib: u64,
    max_kib: u64,
    last_kib: u64,
    samples: Vec<u64>,
}

async fn footprint_soak(
    setup: &Setup,
    outpost: &Target,
    params: &EdgeParams,
) -> anyhow::Result<Soak> {
    eprintln!(
        "edge: soak at {} msg/s for {:?}",
        params.soak_rate, params.soak
    );
    let load = Load {
        size: 100,
        window: params.window,
        rate: Some(f64::from(params.soak_rate)),
        duration: params.soak,
    };
    let pid = setup.edge.pid();
    let sampling = tokio::spawn(async move {
        let mut samples = Vec::new();
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            match crate::system::rss_kib(pid) {
                Ok(kib) => samples.push(kib),
                Err(_) => break,
            }
            if started.elapsed() >= load.duration {
                break;
            }
        }
        samples
    });
    let figures = routed::run_phase(outpost, load).await?;
    let samples = sampling.await?;
    Ok(Soak {
        rate: figures.rate,
        delivered: figures.delivered,
        p50_ns: figures.p50_ns,
        p99_ns: figures.p99_ns,
        p999_ns: figures.p999_ns,
        first_kib: samples.first().copied().unwrap_or(0),
        max_kib: samples.iter().copied().max().unwrap_or(0),
        last_kib: samples.last().copied().unwrap_or(0),
        samples,
    })
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
