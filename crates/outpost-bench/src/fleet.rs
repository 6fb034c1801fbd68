//! `outpost-bench fleet`: the registry at fleet size. Imports devices with tags and desired properties through
//! the bulk registry operation (`POST /devices`, 100 a request), then times queries over all of them
//! (`POST /devices/query`): a tag equality paged to its last row, and a `COUNT()` by desired property.
//!
//! Reported properties need each device to connect and report; the desired-property query stands in for a
//! query by property: the hub evaluates both over the same twin documents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::hub_process::HubProcess;
use crate::report::{Part, Section, Table};
use crate::service::ServiceApi;
use crate::stats::{millis, seconds, LatencySummary};
use crate::{Bench, Profile};

/// Devices a bulk request carries: IoT Hub's maximum.
const BULK_SIZE: usize = 100;

/// Rows asked for per query page: the hub's maximum.
const PAGE_SIZE: usize = 1000;

/// The sites tags spread devices over: a site's query matches one device in ten.
const SITES: usize = 10;

/// Options of `outpost-bench fleet`; each one left out takes the profile's default.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Devices imported [default: 100000; --quick: 2000].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Bulk requests in flight at once [default: 8].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Times each query is run [default: 20; --quick: 5].
    #[arg(long)]
    pub queries: Option<usize>,
    /// Run the hub on this PostgreSQL database (an empty one) instead of SQLite.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
}

/// The queries timed: a label and the text.
fn queries() -> [(&'static str, String); 2] {
    [
        (
            "tag equality, every page (1 device in 10)",
            "SELECT * FROM devices WHERE tags.site = 'site-3'".to_owned(),
        ),
        (
            "COUNT() by desired property (1 device in 2)",
            "SELECT COUNT() AS n FROM devices WHERE properties.desired.firmware = '2.0'".to_owned(),
        ),
    ]
}

/// One device to import.
fn device(index: usize) -> Value {
    json!({
        "id": format!("fleet-{index:06}"),
        "importMode": "create",
        "tags": {"site": format!("site-{}", index % SITES), "index": index},
        "properties": {"desired": {"firmware": if index.is_multiple_of(2) { "2.0" } else { "1.0" }}},
    })
}

/// Imports `devices` devices in bulk requests with `concurrency` in flight; how long it took.
async fn import(
    api: &Arc<ServiceApi>,
    devices: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut batches = (0..devices).step_by(BULK_SIZE).map(|first| {
        let batch: Vec<Value> = (first..(first + BULK_SIZE).min(devices))
            .map(device)
            .collect();
        Value::Array(batch)
    });
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<_>, batch: Value| {
        let api = Arc::clone(api);
        tasks.spawn(async move { api.bulk(&batch).await });
    };
    for batch in batches.by_ref().take(concurrency.max(1)) {
        spawn(&mut tasks, batch);
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .context("a bulk task failed")?
            .context("a bulk request failed")?;
        if let Some(batch) = batches.next() {
            spawn(&mut tasks, batch);
        }
    }
    Ok(started.elapsed())
}

/// Runs `query` to its last page; the rows.
async fn run_query(api: &ServiceApi, query: &str) -> anyhow::Result<usize> {
    let (mut rows, mut continuation) = (0, None::<String>);
    loop {
        let (page, next) = api
            .query_page(query, PAGE_SIZE, continuation.as_deref())
            .await?;
        rows += page.len();
        match next {
            Some(token) => continuation = Some(token),
            None => return Ok(rows),
        }
    }
}

/// Runs the fleet benchmark and returns its figures.
pub async fn run(bench: &Bench, args: &FleetArgs) -> anyhow::Result<Section> {
    let quick = bench.profile == Profile::Quick;
    let devices = args.devices.unwrap_or(if quick { 2_000 } else { 100_000 });
    let concurrency = args.concurrency.unwrap_or(8).max(1);
    let runs = args.queries.unwrap_or(if quick { 5 } else { 20 });
    if devices == 0 || runs == 0 {
        bail!("--devices and --queries must be at least 1");
    }
    let serve_args: Vec<String> = args
        .database
        .iter()
        .flat_map(|url| ["--database".to_owned(), url.clone()])
        .collect();
    let storage = if args.database.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let hub = HubProcess::start_with(&bench.outpost, serve_args).await?;
    eprintln!("fleet: hub pid {} on {}, {storage}", hub.pid(), hub.host());
    let figures = measure(&hub, devices, concurrency, runs).await;
    hub.stop().await;
    let (imported, timed) = figures?;
    let rate = devices as f64 / imported.as_secs_f64();
    let mut parts = vec![Part::Text(format!(
        "{devices} devices imported through `POST /devices` ({BULK_SIZE} a request, {concurrency} requests in \
         flight, each device with tags and a desired property) in {} ({rate:.0} devices/s), on {storage}. \
         Then each query {runs} times, one at a time, pages of {PAGE_SIZE}.",
        seconds(imported)
    ))];
    let mut table = Table::new(&["query", "rows", "pages", "p50", "p99", "max"]);
    for (label, rows, summary) in timed {
        table.row(vec![
            label.to_owned(),
            rows.to_string(),
            rows.div_ceil(PAGE_SIZE).max(1).to_string(),
            millis(summary.p50),
            millis(summary.p99),
            millis(summary.max),
        ]);
    }
    parts.push(Part::Table(table));
    Ok(Section {
        id: "fleet",
        title: "Fleet: bulk import and queries".into(),
        parts,
    })
}

/// The import time, and per query its label, rows and latencies.
type Figures = (Duration, Vec<(&'static str, usize, LatencySummary)>);

async fn measure(
    hub: &HubProcess,
    devices: usize,
    concurrency: usize,
    runs: usize,
) -> anyhow::Result<Figures> {
    let api = Arc::new(ServiceApi::new(hub, concurrency)?);
    eprintln!("fleet: importing {devices} devices");
    let imported = import(&api, devices, concurrency).await?;
    eprintln!("fleet: imported in {}", seconds(imported));
    let mut timed = Vec::new();
    for (label, query) in queries() {
        let (mut samples, mut rows) = (Vec::with_capacity(runs), 0);
        for _ in 0..runs {
            let started = Instant::now();
            rows = run_query(&api, &query).await?;
            samples.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let summary = LatencySummary::from_nanos(samples).context("no query was timed")?;
        eprintln!("fleet: {label}: {rows} rows, p50 {}", millis(summary.p50));
        timed.push((label, rows, summary));
    }
    Ok((imported, timed))
}
