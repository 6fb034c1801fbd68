//! Behaviour of the whole log through its public API: durability across reopen, recovery, endpoints,
//! priorities, TTL, cleanup and the quota.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// Small segments, so a few records span several files.
pub(super) fn small() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        quota_bytes: 1 << 20,
        ..LogOptions::default()
    }
}

pub(super) fn open(dir: &Path) -> MessageLog {
    MessageLog::open(dir, small()).unwrap()
}

pub(super) fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("record-{i}:").into_bytes();
    bytes.resize(len.max(bytes.len()), (i % 251) as u8);
    bytes
}

/// Everything the endpoint has to deliver now, without acknowledging it.
pub(super) fn drain(endpoint: &EndpointQueue) -> Vec<Delivery> {
    endpoint.next_batch(usize::MAX).unwrap()
}

pub(super) fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.seq).collect()
}

/// A runtime on the test's thread, with timers, for the log's async API.
pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

pub(super) fn ack_all(endpoint: &EndpointQueue, deliveries: &[Delivery]) {
    for d in deliveries {
        assert!(endpoint.ack(d.seq), "seq {} was not in flight", d.seq);
    }
}

#[test]
fn records_round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let log = open(dir.path());
        for i in 0..30 {
            let seqs = log
                .append_blocking(vec![Record::to("$upstream", payload(i, 300))])
                .unwrap();
            expected.push((seqs[0], payload(i, 300)));
        }
        assert!(log.stats().segments > 1, "the records should span segments");
    }
    let log = open(dir.path());
    let read = drain(&log.endpoint("$upstream"));
    let read: Vec<_> = read.iter().map(|d| (d.seq, d.payload.to_vec())).collect();
    assert_eq!(read, expected);
    assert_eq!(
        expected.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    assert_eq!(
        log.append_blocking(vec![Record::to("$upstream", "next")])
            .unwrap(),
        vec![31]
    );
}

/// An endpoint reading close behind the writer gets the records written last from memory and the older ones from
/// their segments, in one batch, the same bytes either way; a checkpoint lets go of what every endpoint is done
/// with.
#[test]
fn records_read_from_memory_and_from_disk_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        recent_bytes: 1000,
        // Only the checkpoint below lets go of records.
        checkpoint_interval: Duration::from_hours(1),
        ..small()
    };
    let log = MessageLog::open(dir.path(), options).unwrap();
    let expected: Vec<Vec<u8>> = (0..50).map(|i| payload(i, 100)).collect();
    for p in &expected {
        log.append_blocking(vec![
            Record::to("a", p.clone()).with_target(Target::new("b"))
        ])
        .unwrap();
    }
    assert_eq!(
        log.inner.shared.lock().recent.len(),
        10,
        "the last 1,000 bytes"
    );
    let a = log.endpoint("a");
    let read: Vec<Vec<u8>> = a
        .next_batch(50)
        .unwrap()
        .iter()
        .map(|d| d.payload.to_vec())
        .collect();
    assert_eq!(read, expected);
    for seq in 1..=50 {
        a.ack(seq);
    }
    let b = log.endpoint("b");
    for d in b.next_batch(50).unwrap() {
        assert!(b.ack(d.seq));
    }
    log.checkpoint_blocking().unwrap();
    assert_eq!(log.inner.shared.lock().recent.len(), 0);
}

/// A read bounded in bytes hands out records until their payloads reach the bound (the last one may pass it),
/// and counts the same sizes after a reopen, when the records are indexed from their segments.
#[test]
fn a_read_within_bytes_stops_once_the_payloads_reach_them_before_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..6 {
            log.append_blocking(vec![Record::to("in", payload(i, 400))])
                .unwrap();
        }
        let endpoint = log.endpoint("in");
        assert_eq!(
            seqs(&endpoint.next_batch_within(10, 1000).unwrap()),
            vec![1, 2, 3]
        );
        assert_eq!(
            seqs(&endpoint.next_batch_within(2, 1 << 20).unwrap()),
            vec![4, 5],
            "the count still bounds it"
        );
    }
    let log = open(dir.path());
    let endpoint = log.endpoint("in");
    assert_eq!(
        seqs(&endpoint.next_batch_within(10, 801).unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(seqs(&endpoint.next_batch_within(10, 1).unwrap()), vec![4]);
}

/// A group of small payloads (copied into the group's buffer) and large ones (written from their own buffers),
/// with more slices than one `pwritev` takes, in one segment and across several: every record reads back whole,
/// before and after a reopen that checks every record's CRC.
#[test]
fn small_and_large_payloads_in_one_group_read_back_the_same_across_reopen() {
    let sizes = |i: usize| if i.is_multiple_of(2) { 100 } else { 1024 + i };
    for segment_bytes in [64 << 20, 256 << 10] {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            segment_bytes,
            quota_bytes: 256 << 20,
            ..LogOptions::default()
        };
        let records: Vec<_> = (0..1500)
            .map(|i| Record::to("e", payload(i, sizes(i))))
            .collect();
        {
            let log = MessageLog::open(dir.path(), options.clone()).unwrap();
            // One append is one group.
            assert_eq!(log.append_blocking(records.clone()).unwrap().len(), 1500);
            let read = drain(&log.endpoint("e"));
            assert_eq!(read.len(), 1500);
            for (i, delivery) in read.iter().enumerate() {
                assert_eq!(
                    &delivery.payload[..],
                    &payload(i, sizes(i))[..],
                    "record {i}"
                );
            }
        }
        let log = MessageLog::open(dir.path(), options).unwrap();
        let read = drain(&log.endpoint("e"));
        assert_eq!(seqs(&read), (1..=1500).collect::<Vec<u64>>());
        for (i, delivery) in read.iter().enumerate() {
            assert_eq!(
                &delivery.payload[..],
                &payload(i, sizes(i))[..],
                "record {i} after reopen"
            );
        }
    }
}

/// A closed log of three 50-byte records for "e"; the path of its last segment.
fn three_records_closed(dir: &Path) -> std::path::PathBuf {
    let log = open(dir);
    log.append_blocking((0..3).map(|i| Record::to("e", payload(i, 50))).collect())
        .unwrap();
    drop(log);
    let last = segment::list(dir).unwrap().pop().unwrap();
    dir.join(segment::file_name(last))
}

/// What a crash mid-write leaves after the records: `bytes`.
fn append_to(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// Reopens the log of [`three_records_closed`] after a crash left `truncated` bytes of torn tail: the three
/// records are there, and the next append follows them and survives a reopen.
fn reopens_with_the_three_records_and_appends_after(dir: &Path, truncated: u64) {
    let log = open(dir);
    assert_eq!(log.stats().truncated_at_open, truncated);
    assert_eq!(seqs(&drain(&log.endpoint("e"))), vec![1, 2, 3]);
    assert_eq!(
        log.append_blocking(vec![Record::to("e", "after")]).unwrap(),
        vec![4]
    );
    drop(log);
    let log = open(dir);
    let read = drain(&log.endpoint("e"));
    assert_eq!(seqs(&read), vec![1, 2, 3, 4]);
    assert_eq!(&read[3].payload[..], b"after");
}

#[test]
fn a_torn_tail_is_cut_and_appends_resume_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_records_closed(dir.path());
    // The start of a record whose fsync never finished.
    let mut torn = Vec::new();
    Record::to("e", payload(9, 50)).encode(4, 0, &mut torn);
    append_to(&path, &torn[..torn.len() - 7]);

    reopens_with_the_three_records_and_appends_after(dir.path(), torn.len() as u64 - 7);
}

#[test]
fn the_segment_written_to_is_extended_with_zeros_that_closing_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let log = MessageLog::open(
        dir.path(),
        LogOptions {
            segment_bytes: 1 << 22,
            quota_bytes: 1 << 24,
            ..LogOptions::default()
        },
    )
    .unwrap();
    log.append_blocking((0..3).map(|i| Record::to("e", payload(i, 50))).collect())
        .unwrap();
    let path = dir.path().join(segment::file_name(1));
    let records =
        segment::HEADER.len() as u64 + 3 * Record::to("e", payload(0, 50)).encoded_len() as u64;
    let open_len = fs::metadata(&path).unwrap().len();
    assert!(
        open_len > records,
        "{open_len} bytes for {records} of records"
    );
    assert!(fs::read(&path).unwrap()[records as usize..]
        .iter()
        .all(|&b| b == 0));
    drop(log);
    assert_eq!(fs::metadata(&path).unwrap().len(), records);
}

/// The zeros ahead of the records take disk too: the segment files never hold more than the quota, zeros
/// included (give or take a segment header), however full the log is.
#[test]
fn the_zeros_ahead_of_the_records_stay_within_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        segment_bytes: 64 << 10,
        // Two and a half segments: the third one's zeros would pass it.
        quota_bytes: 160 << 10,
        ..LogOptions::default()
    };
    let quota = options.quota_bytes;
    let log = MessageLog::open(dir.path(), options).unwrap();
    let on_disk = || -> u64 {
        segment::list(dir.path())
            .unwrap()
            .into_iter()
            .map(|first| {
                fs::metadata(dir.path().join(segment::file_name(first)))
                    .unwrap()
                    .len()
            })
            .sum()
    };
    let mut appended = 0;
    while log
        .append_blocking(vec![Record::to("e", payload(appended, 1000))])
        .is_ok()
    {
        appended += 1;
        let segments = appended / 60 + 1;
        assert!(
            on_disk() <= quota + segments as u64 * segment::HEADER.len() as u64,
            "{} bytes of segments for a quota of {quota} after {appended} records",
            on_disk()
        );
    }
    assert!(appended > 140, "full after {appended} records of 1 KB");
}

/// A crash leaves the last segment with the zeros it was extended with: reopening cuts them, and they are not
/// a torn tail.
#[test]
fn zeros_past_the_last_record_are_cut_at_open_and_not_counted_as_torn() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_records_closed(dir.path());
    append_to(&path, &[0; 3000]);

    reopens_with_the_three_records_and_appends_after(dir.path(), 0);
}

/// Bytes of a torn group followed by zeros are a torn tail: cut and counted, zeros and all.
#[test]
fn a_torn_record_before_the_zeros_is_cut_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_records_closed(dir.path());
    let mut torn = Vec::new();
    Record::to("e", payload(9, 50)).encode(4, 0, &mut torn);
    torn.truncate(torn.len() - 7);
    torn.resize(torn.len() + 500, 0);
    append_to(&path, &torn);

    let log = open(dir.path());
    assert_eq!(log.stats().truncated_at_open, torn.len() as u64);
    assert_eq!(seqs(&drain(&log.endpoint("e"))), vec![1, 2, 3]);
}

#[test]
fn a_checksum_failure_in_a_sealed_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..10 {
            log.append_blocking(vec![Record::to("e", payload(i, 1000))])
                .unwrap();
        }
    }
    let first = segment::list(dir.path()).unwrap()[0];
    let path = dir.path().join(segment::file_name(first));
    let mut bytes = fs::read(&path).unwrap();
    let second_record = segment::HEADER.len() + Record::to("e", payload(0, 1000)).encoded_len();
    bytes[second_record + 100] ^= 0x01;
    fs::write(&path, bytes).unwrap();

    match MessageLog::open(dir.path(), small()) {
        Err(LogError::Corrupt {
            path: bad, offset, ..
        }) => {
            assert_eq!(bad, path);
            assert_eq!(offset, second_record as u64);
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a damaged sealed segment must not open"),
    }
}

#[test]
fn damage_inside_the_last_segment_is_cut_like_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        log.append_blocking((0..3).map(|i| Record::to("e", payload(i, 100))).collect())
            .unwrap();
    }
    let last = segment::list(dir.path()).unwrap().pop().unwrap();
    let path = dir.path().join(segment::file_name(last));
    let mut bytes = fs::read(&path).unwrap();
    let second_record = segment::HEADER.len() + Record::to("e", payload(0, 100)).encoded_len();
    bytes[second_record + 40] ^= 0x01;
    fs::write(&path, bytes).unwrap();

    let log = open(dir.path());
    assert_eq!(seqs(&drain(&log.endpoint("e"))), vec![1]);
    assert!(log.stats().truncated_at_open > 0);
}

#[test]
fn a_slow_endpoint_does_not_block_another() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let fast = log.endpoint("edge1/filter/input1");
    let slow = log.endpoint("$upstream");
    let both = |i| {
        Record::new(payload(i, 200))
            .with_target(Target::new("$upstream"))
            .with_target(Target::new("edge1/filter/input1"))
    };
    log.append_blocking((0..20).map(both).collect()).unwrap();
    let first = drain(&fast);
    assert_eq!(first.len(), 20);
    ack_all(&fast, &first);
    log.append_blocking((20..25).map(both).collect()).unwrap();
    assert_eq!(seqs(&drain(&fast)), (21..=25).collect::<Vec<_>>());

    let stats = log.stats();
    assert_eq!(stats.endpoints["edge1/filter/input1"].delivered, 20);
    assert_eq!(stats.endpoints["$upstream"].queued, 25);
    assert_eq!(stats.endpoints["$upstream"].in_flight, 0);
    // The slow endpoint still has every record, from the first.
    assert_eq!(seqs(&slow.next_batch(3).unwrap()), vec![1, 2, 3]);
}

#[test]
fn records_are_delivered_by_priority_then_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let priorities = [5, 0, LOWEST_PRIORITY, 0, 5, 9, 0];
    {
        let log = open(dir.path());
        let records = priorities
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                Record::new(payload(i, 10)).with_target(Target::new("e").with_priority(p))
            })
            .collect();
        log.append_blocking(records).unwrap();
        let read = drain(&log.endpoint("e"));
        assert_eq!(seqs(&read), vec![2, 4, 7, 1, 5, 6, 3]);
    }
    // The same order after a reopen, and a newer urgent record goes before older lower ones.
    let log = open(dir.path());
    let endpoint = log.endpoint("e");
    let first = endpoint.next_batch(4).unwrap();
    assert_eq!(seqs(&first), vec![2, 4, 7, 1]);
    log.append_blocking(vec![
        Record::new("urgent").with_target(Target::new("e").with_priority(0))
    ])
    .unwrap();
    let rest = drain(&endpoint);
    assert_eq!(seqs(&rest), vec![8, 5, 6, 3]);
    assert_eq!(rest[0].priority, 0);
    assert_eq!(rest[3].priority, LOWEST_PRIORITY);
}

#[test]
fn expired_records_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let later = now_unix_ms() + 3_600_000;
    {
        let log = open(dir.path());
        log.append_blocking(vec![
            Record::new("gone").with_target(Target::new("e").with_expiry(1)),
            Record::new("forever").with_target(Target::new("e")),
            Record::new("later").with_target(Target::new("e").with_expiry(later)),
        ])
        .unwrap();
        let read = drain(&log.endpoint("e"));
        assert_eq!(seqs(&read), vec![2, 3]);
        assert_eq!(read[1].expiry_unix_ms, later);
        assert_eq!(log.stats().endpoints["e"].expired, 1);
        assert_eq!(log.stats().expired, 1);
    }
    let log = open(dir.path());
    assert_eq!(seqs(&drain(&log.endpoint("e"))), vec![2, 3]);
    // Skipping it moved the cursor past it, so it is not counted twice.
    assert_eq!(log.stats().expired, 0);
    drop(log);

    // A record that expires while its endpoint is away (behind one that does not) is skipped and counted
    // when the log is opened.
    {
        let log = open(dir.path());
        let soon = now_unix_ms() + 50;
        log.append_blocking(vec![
            Record::to("away", "kept"),
            Record::new("brief").with_target(Target::new("away").with_expiry(soon)),
        ])
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = open(dir.path());
    assert_eq!(log.stats().endpoints["away"].expired, 1);
    assert_eq!(&drain(&log.endpoint("away"))[0].payload[..], b"kept");
}

#[test]
fn a_full_log_rejects_new_records_by_default_until_space_is_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        quota_bytes: 8192,
        ..small()
    };
    let log = MessageLog::open(dir.path(), options).unwrap();
    let endpoint = log.endpoint("e");
    let mut accepted = Vec::new();
    let full = loop {
        match log.append_blocking(vec![Record::to("e", payload(accepted.len(), 1000))]) {
            Ok(seqs) => accepted.extend(seqs),
            Err(e) => break e,
        }
        assert!(accepted.len() < 100, "the quota was never enforced");
    };
    assert!(matches!(full, LogError::Full { quota: 8192, .. }), "{full}");
    assert!(log.stats().bytes_on_disk <= 8192);
    // Nothing acknowledged was dropped.
    let read = drain(&endpoint);
    assert_eq!(seqs(&read), accepted);
    assert_eq!(log.stats().dropped, 0);
    // Once consumed, the space comes back at the next append.
    ack_all(&endpoint, &read);
    let seq = log
        .append_blocking(vec![Record::to("e", payload(0, 1000))])
        .unwrap();
    assert_eq!(seq, vec![accepted.last().unwrap() + 1]);
}

#[test]
fn a_full_log_with_drop_oldest_drops_the_oldest_segment_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        quota_bytes: 8192,
        full_policy: FullPolicy::DropOldest,
        ..small()
    };
    let log = MessageLog::open(dir.path(), options).unwrap();
    for i in 0..20 {
        log.append_blocking(vec![Record::to("e", payload(i, 1000))])
            .unwrap();
    }
    let stats = log.stats();
    assert!(stats.bytes_on_disk <= 8192);
    assert!(stats.dropped > 0);
    let read = drain(&log.endpoint("e"));
    assert_eq!(read.len() as u64 + stats.dropped, 20);
    // What is left is the newest records, in order.
    let first = read[0].seq;
    assert_eq!(seqs(&read), (first..=20).collect::<Vec<_>>());
    assert_eq!(&read.last().unwrap().payload[..], &payload(19, 1000)[..]);
}

#[test]
fn consumed_segments_are_removed_at_checkpoint_and_stay_consumed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        let endpoint = log.endpoint("e");
        for i in 0..20 {
            log.append_blocking(vec![Record::to("e", payload(i, 500))])
                .unwrap();
        }
        assert!(log.stats().segments > 2);
        let read = endpoint.next_batch(15).unwrap();
        ack_all(&endpoint, &read);
        log.checkpoint_blocking().unwrap();
        let stats = log.stats();
        assert!(
            stats.segments < 4,
            "consumed segments should be gone: {stats:?}"
        );
        assert_eq!(stats.endpoints["e"].queued, 5);
        assert_eq!(segment::list(dir.path()).unwrap().len(), stats.segments);
    }
    let log = open(dir.path());
    assert_eq!(
        seqs(&drain(&log.endpoint("e"))),
        (16..=20).collect::<Vec<_>>()
    );
    assert_eq!(log.stats().next_seq, 21);
}

/// The periodic checkpoint runs on its own thread: with no append and no checkpoint asked for, consumed
/// segments still go and the cursor file still moves.
#[test]
fn consumed_segments_go_at_the_next_periodic_checkpoint_without_any_command() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        checkpoint_interval: Duration::from_millis(20),
        ..small()
    };
    {
        let log = MessageLog::open(dir.path(), options.clone()).unwrap();
        let endpoint = log.endpoint("e");
        for i in 0..20 {
            log.append_blocking(vec![Record::to("e", payload(i, 500))])
                .unwrap();
        }
        let before = log.stats().segments;
        assert!(before > 2);
        ack_all(&endpoint, &endpoint.next_batch(15).unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.stats().segments == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no periodic checkpoint removed the consumed segments"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Killed rather than closed: only what a periodic checkpoint wrote is in the cursor file.
        std::mem::forget(log);
    }
    let cursors = cursor::load(dir.path()).unwrap();
    assert_eq!(cursors["e"].values().copied().max(), Some(15));
}

#[test]
fn segments_holding_only_expired_records_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..20 {
        let record = Record::new(payload(i, 500)).with_target(Target::new("absent").with_expiry(1));
        log.append_blocking(vec![record]).unwrap();
    }
    assert!(log.stats().segments > 2);
    log.checkpoint_blocking().unwrap();
    let stats = log.stats();
    assert_eq!(stats.segments, 1);
    assert_eq!(stats.expired, 20);
    assert_eq!(stats.endpoints["absent"].queued, 0);
}

#[test]
fn acknowledgements_survive_reopen_and_unacknowledged_records_come_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        log.append_blocking((0..5).map(|i| Record::to("e", payload(i, 10))).collect())
            .unwrap();
        let endpoint = log.endpoint("e");
        assert_eq!(drain(&endpoint).len(), 5);
        // Out of order: the cursor may only pass 1 and 2.
        for seq in [1, 2, 4] {
            assert!(endpoint.ack(seq));
        }
        assert!(!endpoint.ack(99));
    }
    let log = open(dir.path());
    assert_eq!(seqs(&drain(&log.endpoint("e"))), vec![3, 4, 5]);
}

#[test]
fn rewind_delivers_unacknowledged_records_again_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_blocking((0..4).map(|i| Record::to("e", payload(i, 10))).collect())
        .unwrap();
    let endpoint = log.endpoint("e");
    assert_eq!(seqs(&endpoint.next_batch(3).unwrap()), vec![1, 2, 3]);
    assert!(endpoint.ack(2));
    assert!(endpoint.has_pending());
    endpoint.rewind();
    assert_eq!(seqs(&drain(&endpoint)), vec![1, 3, 4]);
    assert!(!endpoint.has_pending());
}

#[test]
fn ready_wakes_a_waiting_consumer_when_a_record_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let endpoint = log.endpoint("e");
    let runtime = runtime();
    runtime.block_on(async {
        let waiter = tokio::spawn({
            let endpoint = endpoint.clone();
            async move { endpoint.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        log.append(vec![Record::to("other", "not for e")])
            .await
            .unwrap();
        log.append(vec![Record::to("e", "for e")]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("ready should wake")
            .unwrap();
    });
    assert_eq!(&drain(&endpoint)[0].payload[..], b"for e");
}

/// One record of the property test: payload, which of three endpoints (bit mask), and a priority.
fn arbitrary_record() -> impl Strategy<Value = (Vec<u8>, u8, u32)> {
    (
        proptest::collection::vec(any::<u8>(), 0..300),
        1u8..8,
        prop_oneof![Just(0u32), Just(3), Just(LOWEST_PRIORITY)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn arbitrary_records_round_trip_through_append_reopen_and_read(
        records in proptest::collection::vec(arbitrary_record(), 1..40),
        batch in 1usize..8,
    ) {
        const ENDPOINTS: [&str; 3] = ["$upstream", "edge1/filter/input1", "m/ü/in"];
        let dir = tempfile::tempdir().unwrap();
        let mut appended = Vec::new();
        {
            let log = open(dir.path());
            for chunk in records.chunks(batch) {
                let batch: Vec<Record> = chunk
                    .iter()
                    .map(|(payload, mask, priority)| {
                        let mut record = Record::new(payload.clone());
                        for (bit, name) in ENDPOINTS.iter().enumerate() {
                            if mask & (1 << bit) != 0 {
                                record = record.with_target(Target::new(*name).with_priority(*priority));
                            }
                        }
                        record
                    })
                    .collect();
                appended.extend(log.append_blocking(batch).unwrap());
            }
        }
        let log = open(dir.path());
        for (bit, name) in ENDPOINTS.iter().enumerate() {
            let mut expected: Vec<(u32, u64, &[u8])> = records
                .iter()
                .zip(&appended)
                .filter(|((_, mask, _), _)| mask & (1 << bit) != 0)
                .map(|((payload, _, priority), &seq)| (*priority, seq, payload.as_slice()))
                .collect();
            expected.sort_by_key(|&(priority, seq, _)| (priority, seq));
            let read = drain(&log.endpoint(name));
            let read: Vec<(u32, u64, &[u8])> =
                read.iter().map(|d| (d.priority, d.seq, &d.payload[..])).collect();
            prop_assert_eq!(read, expected);
        }
    }
}
