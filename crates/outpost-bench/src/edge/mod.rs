//! `outpost-bench edge`: the edge daemon's figures, on one hub and one edge daemon started for the run.
//!
//! In order: the idle footprint with the two sample modules deployed; routed throughput and latency (N
//! publisher modules → routes → M subscriber modules, QoS 1, through the durable store) next to the same
//! clients against mosquitto and rumqttd, with what each broker acknowledged and did not deliver; a soak at a fixed rate sampling the daemon's memory; the offline backlog and its
//! drain; and the time from a manifest applied to a module running ([`deploy`]).

mod backlog;
mod deploy;
mod manifest;
mod routed;

use std::path::{Path, PathBuf};
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
use crate::rumqttd::{self, Rumqttd};
use crate::service::ServiceApi;
use crate::{Bench, Profile};

use routed::{ms, ratio, Load, PhaseFigures, Target};

/// The low paced load of every target: the latency floor.
const LOW_RATE: f64 = 1000.0;

/// Keep-alive of the clients on the peers, seconds: rumqttd refuses 0, and no phase lasts this long.
const PEER_KEEP_ALIVE: u16 = 900;

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
    /// Unacknowledged publishes per publisher at maximum load, one maximum phase per value; a broker's
    /// maximum is its best of them among the phases that lost nothing, its p99 at maximum the first's
    /// [default: 64,256].
    #[arg(long, value_delimiter = ',')]
    pub window: Option<Vec<usize>>,
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
    /// The rumqttd executable [default: <repo>/.tools/bin/rumqttd, installed by scripts/bench-peers.sh].
    #[arg(long, value_name = "PATH")]
    pub rumqttd: Option<PathBuf>,
    /// Skip the comparison with rumqttd.
    #[arg(long)]
    pub skip_rumqttd: bool,
    /// Skip the container deployment case.
    #[arg(long)]
    pub skip_docker: bool,
    /// Payload sizes of the routed phases, in bytes [default: 100,4096]
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
}

/// The parameters of a run, resolved against the profile.
#[derive(Debug, Clone)]
pub struct EdgeParams {
    publishers: usize,
    subscribers: usize,
    duration: Duration,
    /// The maximum phases' windows; the first is also the paced phases' and the soak's.
    windows: Vec<usize>,
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
            windows: self.window.clone().unwrap_or_else(|| vec![64, 256]),
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
            sizes: self.sizes.clone().unwrap_or_else(|| vec![100, 4096]),
        };
        if params.publishers == 0
            || params.subscribers == 0
            || params.windows.is_empty()
            || params.windows.contains(&0)
        {
            bail!("--publishers, --subscribers and --window must be at least 1");
        }
        if params.sizes.is_empty()
            || params
                .sizes
                .iter()
                .any(|&size| size < crate::loadgen::Stamp::LEN)
        {
            bail!("--sizes must name at least one size, each at least {} bytes (the timestamp each message carries)", crate::loadgen::Stamp::LEN);
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
            keep_alive: 0,
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
            peer: "Outpost",
            name: "Outpost edge hub, TLS, durable".into(),
            broker: self.edge_broker()?,
            publishers,
            subscribers,
        })
    }
}

/// The same clients on a peer broker: publisher i to topic `bench/{i mod M}`, subscriber j on `bench/j`.
fn peer_target(
    peer: &'static str,
    broker: Broker,
    name: &str,
    publishers: usize,
    subscribers: usize,
) -> Target {
    let login = |id: String| Login {
        client_id: id,
        username: None,
        password: None,
        keep_alive: PEER_KEEP_ALIVE,
    };
    Target {
        peer,
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
        targets.push(peer_target(
            "mosquitto",
            plain,
            "mosquitto, plain TCP, in-memory",
            params.publishers,
            params.subscribers,
        ));
        targets.push(peer_target(
            "mosquitto",
            tls,
            "mosquitto, TLS, in-memory",
            params.publishers,
            params.subscribers,
        ));
    }
    let rumqttd = start_rumqttd(args, &params).await;
    if let Some(r) = &rumqttd {
        let plain = Broker {
            addr: r.plain,
            tls: None,
        };
        let tls = Broker {
            addr: r.tls,
            tls: Some((
                Broker::tls_config(&std::fs::read(r.ca_pem())?)?,
                r.tls.ip().to_string(),
            )),
        };
        targets.push(peer_target(
            "rumqttd",
            plain,
            "rumqttd, plain TCP, in-memory",
            params.publishers,
            params.subscribers,
        ));
        targets.push(peer_target(
            "rumqttd",
            tls,
            "rumqttd, TLS, in-memory",
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
        "lost (acked, not delivered)",
    ]);
    let mut summary = Table::new(&[
        "payload",
        "Outpost msg/s",
        "mosquitto msg/s",
        "rumqttd msg/s",
        "Outpost / faster peer",
        "p99 at max: Outpost / mosquitto / rumqttd",
        "lost, all phases: Outpost / mosquitto / rumqttd",
    ]);
    let mut peak_rss = idle_kib;
    for &size in &params.sizes {
        let mut rows: Vec<Row> = Vec::new();
        for target in &targets {
            let log_if_lost = |figures: &routed::PhaseFigures| {
                if target.peer == "Outpost" && figures.lost() > 0 {
                    eprintln!("edge: the daemon's log ends:\n{}", setup.edge.log_tail());
                }
            };
            let row = |load: String, figures, window| Row {
                peer: target.peer,
                name: target.name.clone(),
                load,
                figures,
                window,
            };
            // One maximum phase per window: a broker whose PUBACK waits for its disk needs more publishes in
            // flight to reach its maximum than one that acknowledges from memory.
            let mut best_rate: f64 = 0.0;
            for &window in &params.windows {
                eprintln!(
                    "edge: {} {size} B, maximum load, window {window}",
                    target.name
                );
                let at_max = routed::run_phase(
                    target,
                    Load {
                        size,
                        window,
                        rate: None,
                        duration: params.duration,
                    },
                )
                .await?;
                log_if_lost(&at_max);
                if target.name.starts_with("Outpost") {
                    peak_rss = peak_rss.max(setup.edge.rss_kib()?);
                }
                best_rate = best_rate.max(at_max.rate);
                rows.push(row(
                    format!("max (window {window}×{})", params.publishers),
                    at_max,
                    Some(window),
                ));
            }
            let max = Load {
                size,
                window: params.windows[0],
                rate: None,
                duration: params.duration,
            };
            let half_rate = (best_rate / 2.0).max(1.0);
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
            log_if_lost(&at_half);
            eprintln!("edge: {} {size} B, {LOW_RATE} msg/s", target.name);
            let low = Load {
                rate: Some(LOW_RATE),
                duration: max.duration.min(Duration::from_secs(4)),
                ..max
            };
            let at_low = routed::run_phase(target, low).await?;
            log_if_lost(&at_low);
            rows.push(row(
                format!("half of max: {half_rate:.0} msg/s paced"),
                at_half,
                None,
            ));
            rows.push(row(format!("{LOW_RATE:.0} msg/s paced"), at_low, None));
        }
        summary.row(side_by_side(size, &rows, params.windows[0]));
        // Outpost's maximum at each window, for the peers' rows at the same window.
        let outpost_at = |window| {
            rows.iter()
                .find(|r| r.peer == "Outpost" && r.window == Some(window))
                .map_or(0.0, |r| r.figures.rate)
        };
        let compares: Vec<String> = rows
            .iter()
            .map(|r| match r.window {
                Some(window) if r.peer != "Outpost" => ratio(outpost_at(window), r.figures.rate),
                _ => "–".to_owned(),
            })
            .collect();
        for (
            Row {
                name,
                load,
                figures: f,
                ..
            },
            compare,
        ) in rows.into_iter().zip(compares)
        {
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
                f.loss(),
            ]);
        }
    }
    let mosquitto_version = mosquitto
        .as_ref()
        .map_or("not run".to_owned(), |m| m.version.clone());
    let rumqttd_version = rumqttd
        .as_ref()
        .map_or("rumqttd (not run)".to_owned(), |r| r.version.clone());
    if let Some(m) = mosquitto {
        m.stop().await;
    }
    if let Some(r) = rumqttd {
        r.stop().await;
    }
    parts.push(Part::Heading("Routed throughput and latency".into()));
    let windows = params
        .windows
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    parts.push(Part::Text(format!(
        "{} publisher modules → {} routes → {} subscriber modules (publisher i to subscriber i mod {}), QoS 1 both ways, \
         through the edge hub's durable store (a PUBACK goes once the message is in the log). The same bare MQTT 3.1.1 \
         clients (the harness's, on `outpost_mqtt`'s codec) then load {mosquitto_version} (Debian's package, \
         `persistence false`, `max_queued_messages 0` and `max_queued_bytes 0`: no queue limit, so that it does not \
         drop what it acknowledged for a subscriber that falls behind; other settings default) and {rumqttd_version} \
         (scripts/bench-peers.sh; the settings of its default rumqttd.toml, `max_payload_size` {}, a plain and a TLS \
         v4 server), publisher i to topic `bench/{{i mod {}}}`. Maximum load: each publisher \
         keeps W publishes unacknowledged for {:?}, once for each W of {}: a broker that acknowledges from memory \
         is at its maximum with few in flight, one whose PUBACK waits for its disk needs more to cover the wait, so \
         a broker's maximum is its best of these phases among those in which it lost nothing it acknowledged \
         (a broker that drops is not compared at that rate). Then the same clients paced at half that maximum (window \
         {}), then at 1,000 msg/s for 4 s. \
         Latency runs from encoding the PUBLISH to the subscriber reading it (one clock, one process). \
         \"Outpost / this\" is Outpost's maximum delivered rate over that broker's, same payload and window. \
         \"Lost\" is what the broker acknowledged (PUBACK) and no subscriber received once the subscribers stopped \
         making progress for 5 s. Side by side, a peer's rate is that of its fastest listener and window at maximum \
         load, and each p99 at maximum is that of the first window (the same offered load for all), fastest \
         listener.",
        params.publishers, params.publishers, params.subscribers, params.subscribers,
        rumqttd::MAX_PAYLOAD, params.subscribers, params.duration, windows, params.windows[0]
    )));
    parts.push(Part::Table(summary));
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
    let behind = soak.delivered.saturating_sub(soak.on_schedule);
    table.row(vec![
        format!(
            "soak: sent more than {} ms behind schedule (the publisher held by its window of {} unacknowledged, \
             PUBACKs waiting on an fsync, or by the CPU)",
            crate::loadgen::ON_SCHEDULE.as_millis(),
            soak.window
        ),
        format!(
            "{behind} ({:.2} %), at most {} behind",
            behind as f64 * 100.0 / soak.delivered.max(1) as f64,
            ms(soak.max_behind_ns)
        ),
    ]);
    table.row(vec![
        "soak: latency of the messages sent on schedule, p50 / p99 / p99.9".into(),
        format!(
            "{} / {} / {}",
            ms(soak.on_schedule_ns[0]),
            ms(soak.on_schedule_ns[1]),
            ms(soak.on_schedule_ns[2])
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

/// One phase of one target, for the tables.
struct Row {
    peer: &'static str,
    name: String,
    load: String,
    figures: PhaseFigures,
    /// The window of a maximum phase; `None` for a paced one.
    window: Option<usize>,
}

/// Starts rumqttd unless skipped; says why not when it cannot.
async fn start_rumqttd(args: &EdgeArgs, params: &EdgeParams) -> Option<Rumqttd> {
    if args.skip_rumqttd {
        return None;
    }
    let binary = args.rumqttd.clone().unwrap_or_else(rumqttd::default_path);
    let largest = params.sizes.iter().copied().max().unwrap_or(0);
    match Rumqttd::start(&binary, largest).await {
        Ok(r) => {
            eprintln!("edge: {} on {} and {} (TLS)", r.version, r.plain, r.tls);
            Some(r)
        }
        Err(e) => {
            eprintln!("edge: rumqttd not measured: {e:#}");
            None
        }
    }
}

/// The side-by-side row of one payload size: each broker's fastest listener at maximum load, Outpost's rate
/// over the faster peer's, p99 at maximum load, and what each broker lost over all its phases.
fn side_by_side(size: usize, rows: &[Row], first_window: usize) -> Vec<String> {
    let peers = ["Outpost", "mosquitto", "rumqttd"];
    // Each peer's fastest maximum phase, over its listeners and windows, among those that delivered everything
    // they acknowledged: a broker that drops what it acknowledged (rumqttd's default router drops its oldest
    // segment once ten of 100 MB are full) has less to deliver, and is not compared at that rate, as mosquitto
    // runs with no queue limit so that it drops nothing.
    let maximum = |r: &&Row, peer: &str| r.peer == peer && r.window.is_some();
    let fastest = |peer: &str, window: Option<usize>| {
        rows.iter()
            .filter(|r| {
                maximum(r, peer)
                    && r.figures.lost() == 0
                    && window.is_none_or(|w| r.window == Some(w))
            })
            .max_by(|a, b| a.figures.rate.total_cmp(&b.figures.rate))
    };
    let best: Vec<Option<&Row>> = peers.iter().map(|peer| fastest(peer, None)).collect();
    // Latency compares at the same offered load: the first window.
    let at_first: Vec<Option<&Row>> = peers
        .iter()
        .map(|peer| fastest(peer, Some(first_window)))
        .collect();
    let listener = |r: &Row| {
        if r.name.contains("plain") {
            " (plain"
        } else {
            " (TLS"
        }
    };
    let rate = |r: Option<&Row>, peer: &str| {
        if r.is_none() && rows.iter().any(|row| maximum(&row, peer)) {
            return "lost messages in every maximum phase".to_owned();
        }
        r.map_or("not run".to_owned(), |r| {
            let via = if r.peer == "Outpost" { "" } else { listener(r) };
            let window = r.window.map_or(String::new(), |w| format!("window {w}"));
            match via {
                "" => format!("{:.0} ({window})", r.figures.rate),
                via => format!("{:.0}{via}, {window})", r.figures.rate),
            }
        })
    };
    let faster = best[1..]
        .iter()
        .flatten()
        .map(|r| r.figures.rate)
        .fold(0.0, f64::max);
    let outpost = best[0].map_or(0.0, |r| r.figures.rate);
    let p99 = at_first
        .iter()
        .map(|r| r.map_or("–".to_owned(), |r| ms(r.figures.p99_ns)))
        .collect::<Vec<_>>()
        .join(" / ");
    let lost = peers
        .iter()
        .map(|peer| {
            let mine: Vec<&PhaseFigures> = rows
                .iter()
                .filter(|r| r.peer == *peer)
                .map(|r| &r.figures)
                .collect();
            if mine.is_empty() {
                return "–".to_owned();
            }
            // Lost per phase, summed: a duplicate in one phase does not hide a loss in another.
            let acked: u64 = mine.iter().map(|f| f.acked).sum();
            let lost: u64 = mine.iter().map(|f| f.lost()).sum();
            PhaseFigures {
                acked,
                delivered: acked - lost,
                ..PhaseFigures::default()
            }
            .loss()
        })
        .collect::<Vec<_>>()
        .join(" / ");
    vec![
        format!("{size} B"),
        rate(best[0], peers[0]),
        rate(best[1], peers[1]),
        rate(best[2], peers[2]),
        ratio(outpost, faster),
        p99,
        lost,
    ]
}

/// The soak's figures.
struct Soak {
    rate: f64,
    delivered: u64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    /// Messages sent on schedule, their p50 / p99 / p99.9, and the longest a message was sent behind.
    on_schedule: u64,
    on_schedule_ns: [u64; 3],
    max_behind_ns: u64,
    window: usize,
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
        window: params.windows[0],
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
        on_schedule: figures.on_schedule,
        on_schedule_ns: [
            figures.on_schedule_p50_ns,
            figures.on_schedule_p99_ns,
            figures.on_schedule_p999_ns,
        ],
        max_behind_ns: figures.max_behind_ns,
        window: load.window,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(peer: &'static str, name: &str, window: Option<usize>, rate: f64, p99_ms: u64) -> Row {
        Row {
            peer,
            name: name.to_owned(),
            load: String::new(),
            figures: PhaseFigures {
                acked: 10,
                delivered: 10,
                rate,
                p99_ns: p99_ms * 1_000_000,
                ..PhaseFigures::default()
            },
            window,
        }
    }

    const OUTPOST: &str = "Outpost edge hub, TLS, durable";
    const RUMQTTD_PLAIN: &str = "rumqttd, plain TCP, in-memory";
    const RUMQTTD_TLS: &str = "rumqttd, TLS, in-memory";

    /// A maximum phase of rumqttd's plain listener that delivered 9 of the 10 it acknowledged.
    fn lossy() -> Row {
        let mut lossy = row("rumqttd", RUMQTTD_PLAIN, Some(64), 96_000.0, 4_000);
        lossy.figures.delivered = 9;
        lossy
    }

    #[test]
    fn side_by_side_takes_each_broker_at_its_best_window_and_p99_at_the_first() {
        let rows = [
            row("Outpost", OUTPOST, Some(64), 250_000.0, 2),
            row("Outpost", OUTPOST, Some(256), 350_000.0, 7),
            // A paced phase is never a maximum, however fast.
            row("Outpost", OUTPOST, None, 900_000.0, 1),
            row("rumqttd", RUMQTTD_PLAIN, Some(64), 400_000.0, 600),
            row("rumqttd", RUMQTTD_PLAIN, Some(256), 380_000.0, 2_400),
            row("rumqttd", RUMQTTD_TLS, Some(64), 300_000.0, 500),
        ];
        let summary = side_by_side(100, &rows, 64);
        assert_eq!(summary[1], "350000 (window 256)");
        assert_eq!(summary[2], "not run");
        assert_eq!(summary[3], "400000 (plain, window 64)");
        assert_eq!(summary[4], "0.88×");
        // The first window's p99 for each, its fastest listener there.
        assert_eq!(summary[5], "2.00 ms / – / 600.00 ms");
    }

    #[test]
    fn a_maximum_phase_that_lost_acknowledged_messages_is_not_a_maximum() {
        let rows = [
            row("Outpost", OUTPOST, Some(64), 77_000.0, 8),
            lossy(),
            row("rumqttd", RUMQTTD_TLS, Some(64), 45_000.0, 7_000),
        ];
        let summary = side_by_side(4096, &rows, 64);
        assert_eq!(summary[3], "45000 (TLS, window 64)");
        assert_eq!(summary[4], "1.71×");
        assert_eq!(summary[5], "8.00 ms / – / 7000.00 ms");
        // Its loss still shows.
        assert_eq!(summary[6], "0 / – / 1 (5.0 %)");

        let summary = side_by_side(
            4096,
            &[row("Outpost", OUTPOST, Some(64), 77_000.0, 8), lossy()],
            64,
        );
        assert_eq!(summary[3], "lost messages in every maximum phase");
        assert_eq!(summary[4], "–");
    }

    #[test]
    fn windows_are_a_list_and_none_may_be_zero() {
        let args = EdgeArgs {
            window: Some(vec![64, 0]),
            ..EdgeArgs::default()
        };
        assert!(args.params(Profile::Quick).is_err());
        let args = EdgeArgs {
            window: Some(vec![32, 128]),
            ..EdgeArgs::default()
        };
        assert_eq!(args.params(Profile::Quick).unwrap().windows, vec![32, 128]);
        assert_eq!(
            EdgeArgs::default().params(Profile::Quick).unwrap().windows,
            vec![64, 256]
        );
    }
}
