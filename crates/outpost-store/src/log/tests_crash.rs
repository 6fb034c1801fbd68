//! `kill -9` in the middle of appends: every sequence number a child process printed after its append
//! resolved must be readable after a reopen, in order, with its payload intact.
//!
//! The child is this test binary re-executed on one test (`crash_child_…`), which does nothing unless the
//! environment variable set by the parent is there.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

const CHILD_DIR: &str = "OUTPOST_LOG_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "OUTPOST_LOG_CRASH_CHILD_ROUND";
const CHILD_TEST: &str =
    "log::tests_crash::crash_child_appends_and_prints_acknowledged_seqs_until_killed";
const APPENDERS: usize = 4;

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 16 * 1024,
        checkpoint_interval: Duration::from_millis(20),
        ..LogOptions::default()
    }
}

/// The payload of record `k` of append `i` by appender `t` in `round`; its prefix says which it is.
fn crash_payload(round: usize, t: usize, i: usize, k: usize) -> Vec<u8> {
    format!("{round}/{t}/{i}/{k}|")
        .repeat(i % 40 + 1)
        .into_bytes()
}

/// The payload a record read back should have, rebuilt from its own prefix.
fn expected_from_prefix(payload: &[u8]) -> Option<(usize, Vec<u8>)> {
    let text = std::str::from_utf8(payload).ok()?;
    let head = text.split('|').next()?;
    let fields: Vec<usize> = head
        .split('/')
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [round, t, i, k] = fields[..] else {
        return None;
    };
    Some((round, crash_payload(round, t, i, k)))
}

#[test]
fn crash_child_appends_and_prints_acknowledged_seqs_until_killed() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return; // Only meaningful when spawned by the kill -9 test.
    };
    let round: usize = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let log = MessageLog::open(&dir, options()).unwrap();
    let consumer = log.endpoint("module/input");
    std::thread::spawn(move || loop {
        let batch = consumer.next_batch(20).unwrap();
        for delivery in &batch {
            // Said before the acknowledgement: a record acknowledged (and checkpointed) but never reported
            // would look lost to the parent.
            println!("CONSUMED {}", delivery.seq);
            assert!(consumer.ack(delivery.seq));
        }
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let records = (0..=i % 3)
                        .map(|k| {
                            Record::new(crash_payload(round, t, i, k))
                                .with_target(Target::new("$upstream"))
                                .with_target(Target::new("module/input").with_priority(1))
                        })
                        .collect();
                    let seqs = log.append_blocking(records).unwrap();
                    for (k, seq) in seqs.iter().enumerate() {
                        println!("ACK {seq} {round} {t} {i} {k}");
                    }
                }
            })
        })
        .collect();
    for appender in appenders {
        appender.join().unwrap();
    }
}

/// What a killed child said before it died.
#[derive(Default)]
struct ChildReport {
    acked: BTreeMap<u64, Vec<u8>>,
    consumed: BTreeSet<u64>,
}

impl ChildReport {
    fn read_line(&mut self, line: &str) {
        // A line cut by the kill has no newline and is ignored; its append was durable anyway.
        let Some(line) = line.strip_suffix('\n') else {
            return;
        };
        // libtest's "test … ... " announcement has no newline, so the first report shares its line.
        let Some(at) = ["ACK ", "CONSUMED "]
            .iter()
            .filter_map(|tag| line.find(tag))
            .min()
        else {
            return;
        };
        let fields: Vec<&str> = line[at..].split(' ').collect();
        match fields[..] {
            ["ACK", seq, round, t, i, k] => {
                let [round, t, i, k] = [round, t, i, k].map(|f| f.parse().unwrap());
                self.acked
                    .insert(seq.parse().unwrap(), crash_payload(round, t, i, k));
            }
            ["CONSUMED", seq] => {
                self.consumed.insert(seq.parse().unwrap());
            }
            _ => {}
        }
    }
}

/// Runs one child on `dir`, kills it with SIGKILL after about `acks` acknowledgements, returns what it said.
fn run_and_kill(dir: &Path, round: usize, acks: usize, extra: Duration) -> ChildReport {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut report = ChildReport::default();
    let mut line = String::new();
    while report.acked.len() < acks {
        line.clear();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "the child exited before being killed");
        report.read_line(&line);
    }
    std::thread::sleep(extra);
    child.kill().unwrap(); // SIGKILL: no destructor, no final checkpoint.
    child.wait().unwrap();
    // Whatever it printed before dying is still in the pipe.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    for line in rest.split_inclusive('\n') {
        report.read_line(line);
    }
    report
}

#[test]
fn every_acknowledged_record_survives_kill_9_in_order_and_intact() {
    let dir = tempfile::tempdir().unwrap();
    let random = RandomState::new();
    let mut last_seq = 0;
    for round in 0..4 {
        let acks = 20 + (random.hash_one(round) % 400) as usize;
        let extra = Duration::from_micros(random.hash_one(round + 100) % 5000);
        let report = run_and_kill(dir.path(), round, acks, extra);
        assert!(report.acked.len() >= acks);

        let log = MessageLog::open(dir.path(), options()).unwrap();
        let upstream = log.endpoint("$upstream");
        let read = upstream.next_batch(usize::MAX).unwrap();
        let mut seen = BTreeMap::new();
        let mut previous = last_seq;
        for delivery in &read {
            assert!(
                delivery.seq > previous,
                "out of order at seq {}",
                delivery.seq
            );
            previous = delivery.seq;
            // Acknowledged or not, whatever a reopen returns is whole and from this round: earlier rounds were
            // consumed, checkpointed and must not come back.
            let (from_round, expected) = expected_from_prefix(&delivery.payload)
                .unwrap_or_else(|| panic!("seq {} has a damaged payload", delivery.seq));
            assert_eq!(
                from_round, round,
                "seq {} came back from an earlier round",
                delivery.seq
            );
            assert_eq!(delivery.payload[..], expected[..], "seq {}", delivery.seq);
            seen.insert(delivery.seq, delivery.payload.clone());
        }
        for (seq, payload) in &report.acked {
            let found = seen
                .get(seq)
                .unwrap_or_else(|| panic!("round {round}: acknowledged seq {seq} was lost"));
            assert_eq!(found[..], payload[..]);
        }
        // The consumer's acknowledgements may be lost with it, never a record it had not acknowledged.
        let input = log.endpoint("module/input");
        let redelivered: BTreeSet<u64> = input
            .next_batch(usize::MAX)
            .unwrap()
            .iter()
            .map(|d| d.seq)
            .collect();
        for seq in report.acked.keys() {
            assert!(
                redelivered.contains(seq) || report.consumed.contains(seq),
                "round {round}: seq {seq} was neither consumed nor redelivered"
            );
        }
        // Consume everything, so the next round starts from a clean cursor and cleanup has work to do.
        for seq in &redelivered {
            assert!(input.ack(*seq));
        }
        for delivery in &read {
            assert!(upstream.ack(delivery.seq));
        }
        log.checkpoint_blocking().unwrap();
        last_seq = previous.max(report.acked.keys().last().copied().unwrap_or(0));
        assert_eq!(log.stats().segments, 1, "consumed segments should be gone");
    }
}
