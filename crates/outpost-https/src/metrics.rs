//! Prometheus metrics, shared by the hub (`--metrics-bind`) and the edge daemon (`[metrics] listen`): a
//! [`Registry`] each of them owns (never the `metrics` crate's process-wide recorder, so that a hub and an edge
//! daemon in one process, or many hubs in one test, keep their figures apart), and [`serve`], the plain-HTTP
//! `GET /metrics` listener that renders it in Prometheus' text format.
//!
//! Which metrics exist and what their labels may hold is each owner's business (`outpost_hub::metrics`,
//! `outpost_edge::metrics`); this module only records and renders.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

/// Scrapes served at once; past it, accepting waits (Prometheus scrapes one connection per target).
const MAX_CONNECTIONS: usize = 16;
/// A scrape's request headers must arrive within this; an idle keep-alive connection is closed after it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often histogram samples recorded since the last scrape are folded in, so that memory stays bounded
/// when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// How a registry renders its histograms.
#[derive(Debug, Clone, Copy)]
pub enum Distributions<'a> {
    /// Prometheus histograms with these bucket bounds (seconds, bytes...).
    Buckets(&'a [f64]),
    /// Summaries with these quantiles (Azure IoT Edge's metrics are summaries).
    Quantiles(&'a [f64]),
}

/// A set of metrics, or nothing at all when metrics are off (every handle it gives is then a no-op).
#[derive(Clone, Default)]
pub struct Registry(Option<Arc<Exporter>>);

struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

/// Errors of building a registry.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The exporter refused its settings (empty buckets or quantiles).
    #[error("invalid metrics settings: {0}")]
    Settings(String),
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// When each certificate a hub or an edge device presents or trusts stops being valid (`notAfter`, Unix seconds),
/// labelled by `certificate` (`CA Outpost hub CA`, `hub server`, `edge hub server`, `module NAME server`):
/// alert on `outpost_certificate_expiry_timestamp_seconds - time() < 86400 * 7`.
pub const CERTIFICATE_EXPIRY: &str = "outpost_certificate_expiry_timestamp_seconds";

impl Registry {
    /// Sets [`CERTIFICATE_EXPIRY`] for each `(name, notAfter)`.
    pub fn certificate_expiries(&self, expiries: &[(String, i64)]) {
        for (name, not_after) in expiries {
            self.gauge(
                CERTIFICATE_EXPIRY,
                vec![Label::new("certificate", name.clone())],
            )
            .set(*not_after as f64);
        }
    }

    /// A registry that records nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// A registry whose every metric carries `global_labels` (Azure's `iothub`, `edge_device`...).
    pub fn new(
        global_labels: &[(&str, String)],
        distributions: Distributions<'_>,
    ) -> Result<Self, MetricsError> {
        let mut builder = PrometheusBuilder::new();
        for (name, value) in global_labels {
            builder = builder.add_global_label(*name, value.clone());
        }
        builder = match distributions {
            Distributions::Buckets(bounds) => builder.set_buckets(bounds),
            Distributions::Quantiles(quantiles) => builder.set_quantiles(quantiles),
        }
        .map_err(|e| MetricsError::Settings(e.to_string()))?;
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Ok(Self(Some(Arc::new(Exporter { recorder, handle }))))
    }

    /// Whether this registry records.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The counter `name` with `labels`.
    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        match &self.0 {
            Some(exporter) => exporter
                .recorder
                .register_counter(&Key::from_parts(name, labels), &METADATA),
            None => Counter::noop(),
        }
    }

    /// The gauge `name` with `labels`.
    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        match &self.0 {
            Some(exporter) => exporter
                .recorder
                .register_gauge(&Key::from_parts(name, labels), &METADATA),
            None => Gauge::noop(),
        }
    }

    /// The histogram (or summary) `name` with `labels`.
    pub fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        match &self.0 {
            Some(exporter) => exporter
                .recorder
                .register_histogram(&Key::from_parts(name, labels), &METADATA),
            None => Histogram::noop(),
        }
    }

    /// Every metric in Prometheus' text format (empty when metrics are off).
    pub fn render(&self) -> String {
        self.0
            .as_ref()
            .map(|exporter| exporter.handle.render())
            .unwrap_or_default()
    }

    fn upkeep(&self) {
        if let Some(exporter) = &self.0 {
            exporter.handle.run_upkeep();
        }
    }
}

/// Serves `GET /metrics` over plain HTTP/1.1 on `listener` until `shutdown` resolves: each scrape first calls
/// `sample` (which sets the gauges read from state: queue lengths, connections, disk), then renders `registry`.
///
/// At most [`MAX_CONNECTIONS`] connections are served at once, each closed when its request headers take
/// longer than [`HEADER_TIMEOUT`] (an idle keep-alive connection too).
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    sample: impl Fn() + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let sample = Arc::new(sample);
    let scraped = registry.clone();
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let sample = Arc::clone(&sample);
            let registry = scraped.clone();
            async move {
                sample();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    registry.render(),
                )
            }
        }),
    );
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut upkeep = tokio::time::interval(UPKEEP);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = loop {
            tokio::select! {
                () = &mut shutdown => return connections.abort_all(),
                _ = upkeep.tick() => registry.upkeep(),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => break stream,
                    Err(error) => {
                        tracing::warn!(%error, "metrics accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        };
        let router = router.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                router.clone().oneshot(request)
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = served.await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}
