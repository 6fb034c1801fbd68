//! `outpost-bench fleet`: the fleet layer's figures (issue 11) on one fresh hub.
//!
//! 1. **Bulk import**: `--devices` identities through `POST /devices` (100 per request, as IoT Hub allows),
//!    the first `--edge-devices` of them IoT Edge devices; then every twin tagged (`site`, and `ring = 'r1'`
//!    on the edge devices) through `PATCH /twins/{d}`.
//! 2. **Reported properties**: `--reporters` devices connect over MQTT and report `fw` (`1.0` or `2.0`).
//! 3. **Queries**: `POST /devices/query` by tag and by reported property, every page of the result, repeated
//!    `--repeat` times; latency of the whole result.
//! 4. **An automatic deployment** targeting the edge devices by tag: the time from the configuration's `PUT`
//!    until every targeted `$edgeAgent` twin holds its module, read back with a query over module twins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::device::{DeviceCredentials, DeviceEndpoint};
use crate::hub_process::HubProcess;
use crate::report::{Part, Section, Table};
use crate::service::ServiceApi;
use crate::stats::{millis, seconds, LatencySummary};
use crate::{Bench, Profile};

/// Devices per bulk request: IoT Hub's limit.
const BULK_BATCH: usize = 100;

/// Rows per query page: IoT Hub's largest `x-ms-max-item-count`.
const PAGE_SIZE: usize = 1000;

/// How many sites the devices are spread over (`tags.site`).
const SITES: usize = 10;

/// Options of `outpost-bench fleet`; each one left out takes the profile's default.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Devices imported in bulk [default: 100000; --quick: 2000].
    #[arg(long)]
    pub devices: Option<usize>,
    /// How many of them are IoT Edge devices targeted by the automatic deployment [default: 10000; --quick: 200].
    #[arg(long)]
    pub edge_devices: Option<usize>,
    /// Devices that connect and report a property [default: 10000; --quick: 200].
    #[arg(long)]
    pub reporters: Option<usize>,
    /// How often each query runs [default: 20; --quick: 3].
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Requests in flight while importing, tagging and reporting [default: 16].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Run the hub on this PostgreSQL database (`postgres://USER@HOST:PORT/DB`, an empty one) instead of SQLite.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Run the hub without its query index (`OUTPOST_NO_QUERY_INDEX` in its environment): every query reads
    /// every twin, the figures to compare the index against.
    #[arg(long)]
    pub no_query_index: bool,
}

/// What `fleet` runs with.
#[derive(Debug, Clone, Copy)]
struct FleetParams {
    devices: usize,
    edge_devices: usize,
    reporters: usize,
    repeat: usize,
    concurrency: usize,
}

impl FleetArgs {
    fn params(&self, profile: Profile) -> anyhow::Result<FleetParams> {
        let quick = profile == Profile::Quick;
        let params = FleetParams {
            devices: self.devices.unwrap_or(if quick { 2_000 } else { 100_000 }),
            edge_devices: self
                .edge_devices
                .unwrap_or(if quick { 200 } else { 10_000 }),
            reporters: self.reporters.unwrap_or(if quick { 200 } else { 10_000 }),
            repeat: self.repeat.unwrap_or(if quick { 3 } else { 20 }).max(1),
            concurrency: self.concurrency.unwrap_or(16).max(1),
        };
        if params.devices == 0 {
            bail!("--devices must be at least 1");
        }
        if params.edge_devices > params.devices || params.reporters > params.devices {
            bail!("--edge-devices and --reporters cannot exceed --devices");
        }
        Ok(params)
    }
}

/// Runs the fleet benchmark and returns its figures.
pub async fn run(bench: &Bench, args: &FleetArgs) -> anyhow::Result<Section> {
    let params = args.params(bench.profile)?;
    eprintln!(
        "fleet: {} devices ({} edge), {} reporting, queries x{}",
        params.devices, params.edge_devices, params.reporters, params.repeat
    );
    let serve_args = args
        .database
        .iter()
        .flat_map(|url| ["--database".to_owned(), url.clone()])
        .collect();
    let env = if args.no_query_index {
        vec![("OUTPOST_NO_QUERY_INDEX".to_owned(), "1".to_owned())]
    } else {
        Vec::new()
    };
    let mut hub = HubProcess::start_with_env(&bench.outpost, serve_args, env).await?;
    eprintln!("fleet: hub pid {} on {}", hub.pid(), hub.host());
    let figures = measure(&hub, params).await;
    let alive = hub.check_alive();
    hub.stop().await;
    alive?;
    let figures = figures?;
    Ok(Section {
        id: match (args.database.is_some(), args.no_query_index) {
            (true, false) => "fleet-postgres",
            (true, true) => "fleet-postgres-no-index",
            (false, false) => "fleet",
            (false, true) => "fleet-no-index",
        },
        title: format!(
            "Fleet: bulk import, queries and an automatic deployment ({}, {})",
            if args.database.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            if args.no_query_index {
                "without the query index"
            } else {
                "with the query index"
            }
        ),
        parts: figures.to_parts(params),
    })
}

struct FleetFigures {
    import: Duration,
    tagging: Duration,
    reporting: Duration,
    queries: Vec<(String, usize, LatencySummary)>,
    deployment: Duration,
    rss_mib: f64,
    peak_rss_mib: f64,
}

async fn measure(hub: &HubProcess, params: FleetParams) -> anyhow::Result<FleetFigures> {
    let api = Arc::new(ServiceApi::new(hub, params.concurrency)?);
    let devices: Vec<DeviceCredentials> = (0..params.devices)
        .map(|i| DeviceCredentials {
            id: format!("fleet-{i:06}"),
            key: base64::engine::general_purpose::STANDARD.encode(format!("{i:032}")),
        })
        .collect();

    let started = Instant::now();
    let batches: Vec<Value> = devices
        .chunks(BULK_BATCH)
        .enumerate()
        .map(|(batch, chunk)| {
            Value::Array(
                chunk
                    .iter()
                    .enumerate()
                    .map(|(offset, device)| {
                        let edge = batch * BULK_BATCH + offset < params.edge_devices;
                        json!({
                            "id": device.id,
                            "importMode": "create",
                            "status": "enabled",
                            "capabilities": {"iotEdge": edge},
                            "authentication": {"type": "sas", "symmetricKey": {
                                "primaryKey": device.key, "secondaryKey": device.key}},
                        })
                    })
                    .collect(),
            )
        })
        .collect();
    run_bounded(batches, params.concurrency, |body| {
        let api = Arc::clone(&api);
        async move {
            let result = api.post_json("/devices", &body).await?;
            if result.get("isSuccessful") != Some(&Value::Bool(true)) {
                bail!("the bulk import failed: {result}");
            }
            Ok(())
        }
    })
    .await
    .context("bulk import")?;
    let import = started.elapsed();
    eprintln!("fleet: imported {} devices in {import:?}", params.devices);

    let started = Instant::now();
    let patches: Vec<(String, String)> = devices
        .iter()
        .enumerate()
        .map(|(i, device)| {
            let mut tags = json!({"site": format!("site-{}", i % SITES)});
            if i < params.edge_devices {
                tags["ring"] = "r1".into();
            }
            (device.id.clone(), json!({ "tags": tags }).to_string())
        })
        .collect();
    run_bounded(patches, params.concurrency * 2, |(id, body)| {
        let api = Arc::clone(&api);
        async move { Ok(api.patch_twin(&id, body).await?) }
    })
    .await
    .context("tagging")?;
    let tagging = started.elapsed();
    eprintln!("fleet: tagged in {tagging:?}");

    let started = Instant::now();
    let endpoint = DeviceEndpoint::new(hub.mqtt_addr(), &hub.host(), &hub.ca_pem())?;
    let reporters: Vec<(usize, DeviceCredentials)> = devices
        .iter()
        .enumerate()
        .rev()
        .take(params.reporters)
        .map(|(i, d)| (i, d.clone()))
        .collect();
    run_bounded(reporters, params.concurrency * 4, |(i, device)| {
        let endpoint = endpoint.clone();
        async move {
            let client = endpoint.connect(&device).await?;
            let fw = if i % 2 == 0 { "1.0" } else { "2.0" };
            client
                .publish(
                    "$iothub/twin/PATCH/properties/reported/?$rid=1",
                    outpost_mqtt::QoS::AtLeastOnce,
                    json!({ "fw": fw }).to_string(),
                )
                .await
                .with_context(|| format!("{} cannot report", device.id))?;
            client.disconnect().await;
            Ok(())
        }
    })
    .await
    .context("reporting")?;
    let expected = params.reporters;
    wait_until(
        Duration::from_mins(5),
        "every reported property to be stored",
        || {
            let api = Arc::clone(&api);
            async move {
                let rows = api
                    .query(
                        "SELECT COUNT() AS n FROM devices WHERE IS_DEFINED(properties.reported.fw)",
                        PAGE_SIZE,
                    )
                    .await?;
                Ok(count_of(&rows) >= expected)
            }
        },
    )
    .await?;
    let reporting = started.elapsed();
    eprintln!(
        "fleet: {} devices reported in {reporting:?}",
        params.reporters
    );

    let mut queries = Vec::new();
    for (name, text) in [
        (
            "by tag",
            "SELECT deviceId FROM devices WHERE tags.site = 'site-3'".to_owned(),
        ),
        (
            "by reported property",
            "SELECT deviceId FROM devices WHERE properties.reported.fw = '2.0'".to_owned(),
        ),
        (
            "count by tag",
            "SELECT COUNT() AS n FROM devices WHERE tags.site = 'site-3'".to_owned(),
        ),
    ] {
        let mut samples = Vec::new();
        let mut rows = 0;
        for _ in 0..params.repeat {
            let started = Instant::now();
            rows = api.query(&text, PAGE_SIZE).await?.len();
            samples.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let summary = LatencySummary::from_nanos(samples).context("no query samples")?;
        eprintln!("fleet: query {name}: {rows} rows, p50 {:?}", summary.p50);
        queries.push((format!("{name}: `{text}`"), rows, summary));
    }

    let content = json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "outpost/agent:1"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                            "settings": {"image": "outpost/hub:1"}}},
            "modules": {"probe": {"version": "1.0", "type": "docker", "status": "running",
                                  "restartPolicy": "always", "settings": {"image": "probe:1"}}}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {},
                                            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}}});
    let configuration = json!({
        "id": "fleet-bench", "schemaVersion": "1.0", "labels": {}, "priority": 1,
        "targetCondition": "tags.ring = 'r1'", "content": content, "metrics": {"queries": {}},
    });
    let started = Instant::now();
    api.put("/configurations/fleet-bench", &configuration)
        .await?;
    let targeted = params.edge_devices;
    wait_until(
        Duration::from_mins(10),
        "every targeted $edgeAgent twin to hold the deployment",
        || {
            let api = Arc::clone(&api);
            async move {
                let rows = api
                    .query(
                        "SELECT COUNT() AS n FROM devices.modules WHERE moduleId = '$edgeAgent' \
                     AND properties.desired.modules.probe.version = '1.0'",
                        PAGE_SIZE,
                    )
                    .await?;
                Ok(count_of(&rows) >= targeted)
            }
        },
    )
    .await?;
    let deployment = started.elapsed();
    eprintln!("fleet: deployment on {targeted} devices in {deployment:?}");

    let rss_mib = hub.rss_kib()? as f64 / 1024.0;
    let peak_rss_mib = hub.peak_rss_kib()? as f64 / 1024.0;
    Ok(FleetFigures {
        import,
        tagging,
        reporting,
        queries,
        deployment,
        rss_mib,
        peak_rss_mib,
    })
}

impl FleetFigures {
    fn to_parts(&self, params: FleetParams) -> Vec<Part> {
        let per_second =
            |n: usize, d: Duration| format!("{:.0}/s", n as f64 / d.as_secs_f64().max(1e-9));
        let mut steps = Table::new(&["step", "count", "time", "rate"]);
        steps.row(vec![
            "bulk import (`POST /devices`, 100 per request)".into(),
            params.devices.to_string(),
            seconds(self.import),
            per_second(params.devices, self.import),
        ]);
        steps.row(vec![
            "tags (`PATCH /twins/{d}`)".into(),
            params.devices.to_string(),
            seconds(self.tagging),
            per_second(params.devices, self.tagging),
        ]);
        steps.row(vec![
            "reported property (MQTT connect, report, disconnect)".into(),
            params.reporters.to_string(),
            seconds(self.reporting),
            per_second(params.reporters, self.reporting),
        ]);
        steps.row(vec![
            "automatic deployment: PUT until every targeted `$edgeAgent` twin holds it".into(),
            params.edge_devices.to_string(),
            seconds(self.deployment),
            per_second(params.edge_devices, self.deployment),
        ]);
        let mut queries = Table::new(&[
            "query (whole result, pages of 1,000)",
            "rows",
            "p50",
            "p99",
            "max",
        ]);
        for (name, rows, summary) in &self.queries {
            queries.row(vec![
                name.clone(),
                rows.to_string(),
                millis(summary.p50),
                millis(summary.p99),
                millis(summary.max),
            ]);
        }
        vec![
            Part::Table(steps),
            Part::Heading(format!(
                "Queries over {} devices, {} runs each",
                params.devices, params.repeat
            )),
            Part::Table(queries),
            Part::Text(format!(
                "Hub resident set at the end: {:.1} MiB (peak {:.1} MiB).",
                self.rss_mib, self.peak_rss_mib
            )),
        ]
    }
}

/// The `n` of a `SELECT COUNT() AS n` answer (0 when it has no row).
fn count_of(rows: &[Value]) -> usize {
    rows.first()
        .and_then(|row| row.get("n"))
        .and_then(Value::as_u64)
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Runs `work` on every item, `concurrency` at a time; the first error stops the run.
async fn run_bounded<T, F, Fut>(items: Vec<T>, concurrency: usize, work: F) -> anyhow::Result<()>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut pending = items.into_iter();
    let mut tasks = JoinSet::new();
    for item in pending.by_ref().take(concurrency.max(1)) {
        tasks.spawn(work(item));
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a benchmark task failed")??;
        if let Some(item) = pending.next() {
            tasks.spawn(work(item));
        }
    }
    Ok(())
}

/// Polls `check` every 100 ms until it says yes, for at most `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, check: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
