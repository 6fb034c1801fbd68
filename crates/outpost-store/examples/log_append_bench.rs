//! Appends per second into the message log: 1 and 16 concurrent appenders of 100-byte records, each append
//! awaited (so each is fsync'd before the appender sends its next), for the record; nothing is asserted.
//!
//! `cargo run -p outpost-store --example log_append_bench [-- SECONDS]`

use std::time::{Duration, Instant};

use outpost_store::log::{LogOptions, MessageLog, Record};

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let duration = Duration::from_secs_f64(seconds);
    for appenders in [1, 16] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = MessageLog::open(dir.path(), LogOptions::default()).expect("open the log");
        let start = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut appended = 0u64;
                    while start.elapsed() < duration {
                        log.append(vec![Record::to("$upstream", vec![0x5a; 100])])
                            .await
                            .expect("append");
                        appended += 1;
                    }
                    appended
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("appender task");
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "{appenders:>2} appender(s), 100-byte records: {:>8.0} appends/s ({total} in {elapsed:.2} s, {} bytes on disk)",
            total as f64 / elapsed,
            log.stats().bytes_on_disk
        );
    }
}
