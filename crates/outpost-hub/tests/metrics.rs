//! The hub's `/metrics` listener, scraped over plain HTTP as Prometheus does: every sample line parses as
//! Prometheus' text format (name, labels, value) and the counters say what happened.

// Counters count whole events: their values are exact integers in f64, so exact comparison is right.
#![allow(clippy::float_cmp)]

use std::collections::BTreeMap;
use std::sync::Arc;

use outpost_core::{DeviceId, Identity, Message};
use outpost_hub::metrics::{HubMetrics, STORAGE_COMMIT_DURATION, TELEMETRY_MESSAGES};
use outpost_hub::registry::{DeviceSpec, Precondition};
use outpost_hub::Hub;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One sample line: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses a sample line of the text format, refusing anything malformed.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or_else(|| format!("no value: {line}"))?;
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("bad metric name: {line}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let end = loop {
            let Some((i, c)) = chars.next() else {
                return Err(format!("unterminated labels: {line}"));
            };
            match c {
                '}' if key.is_empty() => break i,
                ',' if key.is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(format!("unquoted label value: {line}"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c)) => value.push(c),
                                None => return Err(format!("bad escape: {line}")),
                            },
                            Some((_, '"')) => break,
                            Some((_, c)) => value.push(c),
                            None => return Err(format!("unterminated label value: {line}")),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                _ => return Err(format!("bad label name: {line}")),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("no value: {line}"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse()
            .map_err(|_| format!("bad value {other:?}: {line}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn a_scrape_of_the_hub_parses_as_prometheus_text_and_counts_what_happened() {
    let hub = Hub::in_memory("hub.test")
        .unwrap()
        .with_metrics(HubMetrics::new("hub.test").unwrap());
    hub.registry()
        .put_device(
            &DeviceSpec {
                device_id: "sensor".into(),
                ..DeviceSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
    let sensor = Identity::device(DeviceId::new("sensor").unwrap());
    for i in 0..3 {
        hub.messaging()
            .accept_telemetry(
                &sensor,
                &Message {
                    body: format!("{i}").into_bytes().into(),
                    ..Message::default()
                },
            )
            .await
            .unwrap();
    }
    let hub = Arc::new(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let expiries = || vec![("hub server".to_owned(), 2_000_000_000)];
    let served = tokio::spawn(outpost_hub::metrics::serve(
        hub.clone(),
        expiries,
        listener,
        async {
            let _ = stopped.await;
        },
    ));

    let (head, body) = scrape(addr).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut samples = Vec::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if words.first() == Some(&"TYPE") {
                assert!(
                    matches!(
                        words.get(2),
                        Some(&("counter" | "gauge" | "histogram" | "summary"))
                    ),
                    "{line}"
                );
            }
            continue;
        }
        samples.push(parse_sample(line).unwrap_or_else(|e| panic!("{e}\n{body}")));
    }
    let find = |name: &str| samples.iter().find(|s| s.name == name);

    let telemetry = find(TELEMETRY_MESSAGES).expect(TELEMETRY_MESSAGES);
    assert_eq!(telemetry.value, 3.0);
    assert_eq!(telemetry.labels["via"], "mqtt");
    assert_eq!(telemetry.labels["iothub"], "hub.test");
    assert_eq!(find("outpost_hub_connected_devices").unwrap().value, 0.0);
    // One commit for the device, three for the messages; the histogram has its buckets, sum and count.
    let count = find(&format!("{STORAGE_COMMIT_DURATION}_count")).unwrap();
    assert_eq!(count.value, 4.0);
    let infinite = samples
        .iter()
        .find(|s| s.name == format!("{STORAGE_COMMIT_DURATION}_bucket") && s.labels["le"] == "+Inf")
        .unwrap();
    assert_eq!(infinite.value, 4.0);
    let expiry = find("outpost_certificate_expiry_timestamp_seconds").unwrap();
    assert_eq!(
        (expiry.labels["certificate"].as_str(), expiry.value),
        ("hub server", 2_000_000_000.0)
    );

    let (head, ()) = {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /other HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        (response, ())
    };
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    stop.send(()).unwrap();
    served.await.unwrap();
}

#[test]
fn the_text_format_parser_refuses_what_prometheus_would() {
    assert!(parse_sample("a_b{x=\"1\",y=\"q\\\"\"} 2.5").is_ok());
    assert!(parse_sample("a{x=1} 2").is_err());
    assert!(parse_sample("a{x=\"1\" 2").is_err());
    assert!(parse_sample("a nope").is_err());
}
