//! The offline backlog: the hub stops, a module sends `count` messages routed to `$upstream` (the edge hub
//! stores them), the hub starts again on the same data, and the harness times the drain from the edge hub's
//! store counters.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::loadgen::{PublishPlan, Publisher};
use crate::report::{Part, Table};
use crate::stats::seconds;
use crate::Bench;

use super::Setup;

/// Longest the backlog may take to be sent or to drain.
const LIMIT: Duration = Duration::from_mins(15);

/// `$upstream`'s (queued + in flight, delivered) in the store counters.
pub fn upstream(stats: &Value) -> (u64, u64) {
    let endpoint = stats.pointer("/endpoints/$upstream");
    let field = |name| {
        endpoint
            .and_then(|e| e.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (field("queued") + field("inFlight"), field("delivered"))
}

/// Sends the backlog with the hub down and times its drain.
pub async fn run(bench: &Bench, setup: &mut Setup, count: u64) -> anyhow::Result<Vec<Part>> {
    let broker = setup.edge_broker()?;
    let login = setup.module_login(&setup.backlog)?;
    // Online first, so that the edge hub knows the module's identity before the hub goes away.
    let warm = PublishPlan {
        topic: format!(
            "devices/{}/modules/backlog/messages/events/",
            setup.edge.device.id
        ),
        size: 100,
        window: 256,
        rate: None,
        duration: LIMIT,
        phase: 0,
        count: Some(10),
    };
    Publisher::connect(&broker, &login)
        .await?
        .run(warm.clone())
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("edge: backlog: stopping the hub");
    setup.hub.pause().await;
    let waited = Instant::now();
    while setup
        .edge
        .stats()
        .await?
        .get("online")
        .and_then(Value::as_bool)
        != Some(false)
    {
        if waited.elapsed() > Duration::from_secs(30) {
            bail!("the edge hub still says it is online 30 s after the hub stopped");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (queued_before, delivered_before) = upstream(&setup.edge.stats().await?);
    eprintln!("edge: backlog: sending {count} messages");
    let plan = PublishPlan {
        count: Some(count),
        ..warm
    };
    let sent = Publisher::connect(&broker, &login).await?.run(plan).await?;
    let stats = setup.edge.stats().await?;
    let (queued, _) = upstream(&stats);
    let disk = stats.get("diskBytes").and_then(Value::as_u64).unwrap_or(0);

    eprintln!("edge: backlog: {queued} queued; starting the hub");
    let started = Instant::now();
    setup
        .hub
        .resume(&bench.outpost)
        .await
        .context("the hub did not come back")?;
    let listening = started.elapsed();
    let mut first_progress = None;
    let drained = loop {
        let (left, delivered) = upstream(&setup.edge.stats().await?);
        if first_progress.is_none() && delivered > delivered_before {
            first_progress = Some(started.elapsed());
        }
        if left <= queued_before && delivered >= delivered_before + sent.acked {
            break started.elapsed();
        }
        if started.elapsed() > LIMIT {
            bail!("the backlog did not drain within {LIMIT:?}: {left} still queued");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = first_progress.unwrap_or(drained);
    let rate = sent.acked as f64 / drained.as_secs_f64();
    let flowing = sent.acked as f64 / drained.saturating_sub(first).as_secs_f64().max(1e-3);
    eprintln!("edge: backlog drained in {drained:?} ({rate:.0} msg/s)");

    let mut table = Table::new(&["figure", "value"]);
    table.row(vec![
        "messages queued while the hub was down".into(),
        format!(
            "{} sent, {} acknowledged, {queued} queued for $upstream, {:.0} MiB on disk",
            sent.sent,
            sent.acked,
            disk as f64 / 1_048_576.0
        ),
    ]);
    table.row(vec![
        "ingest rate while offline".into(),
        format!(
            "{:.0} msg/s ({})",
            sent.acked as f64 / sent.elapsed.as_secs_f64(),
            seconds(sent.elapsed)
        ),
    ]);
    table.row(vec!["hub start → listening".into(), seconds(listening)]);
    table.row(vec![
        "hub start → first message delivered".into(),
        seconds(first),
    ]);
    table.row(vec!["hub start → backlog drained".into(), seconds(drained)]);
    table.row(vec![
        "drain rate from hub start".into(),
        format!("{rate:.0} msg/s"),
    ]);
    let flowing = if drained.saturating_sub(first) < Duration::from_millis(500) {
        "n/a (drained within a few polls)".to_owned()
    } else {
        format!("{flowing:.0} msg/s")
    };
    table.row(vec![
        "drain rate once flowing (first delivery → drained)".into(),
        flowing,
    ]);
    Ok(vec![
        Part::Heading("Offline backlog and drain".into()),
        Part::Text(format!(
            "The hub is stopped (SIGTERM); one module publishes {count} 100-byte messages (QoS 1, 256 unacknowledged) \
             on a route `INTO $upstream`; the hub starts again on the same data directory and ports, and the \
             harness polls the edge hub's store counters (`outpost edge stats`: `$upstream` queued, in flight, \
             delivered) every 100 ms until all are delivered. {}",
            if count >= 1_000_000 { "The long profile (`--full`)." } else { "The standard profile; `--full` queues 1,000,000." }
        )),
        Part::Table(table),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_upstream_backlog_counts_queued_and_in_flight() {
        let stats =
            json!({"endpoints": {"$upstream": {"queued": 5, "inFlight": 2, "delivered": 9}}});
        assert_eq!(upstream(&stats), (7, 9));
        assert_eq!(upstream(&json!({})), (0, 0));
    }
}
