//! Failures on purpose: injected I/O errors before persistence steps, a second writer, bad input; and the
//! group commit's sharing of fsyncs, observed through the same hook.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::tests::{ack_all, drain, open, payload, runtime, seqs, small};
use super::*;

#[test]
fn concurrent_appends_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let syncs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&syncs);
    let hook: FaultHook = Arc::new(move |point| {
        if point == FaultPoint::SegmentSync && counter.fetch_add(1, Ordering::SeqCst) == 0 {
            // Hold the first group's fsync so the other appends queue up behind it.
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    });
    let log = MessageLog::open_with_faults(dir.path(), small(), hook).unwrap();
    let pending: Vec<_> = (0..16)
        .map(|i| log.append(vec![Record::to("e", payload(i, 100))]))
        .collect();
    let runtime = runtime();
    let mut acked: Vec<u64> = runtime.block_on(async {
        let mut acked = Vec::new();
        for append in pending {
            acked.extend(append.await.unwrap());
        }
        acked
    });
    assert!(
        syncs.load(Ordering::SeqCst) <= 3,
        "16 appends took {} fsyncs",
        syncs.load(Ordering::SeqCst)
    );
    let in_call_order = acked.clone();
    acked.sort_unstable();
    assert_eq!(
        in_call_order, acked,
        "appends from one task keep their order"
    );
    assert_eq!(acked, (1..=16).collect::<Vec<_>>());
}

#[test]
fn a_failed_segment_write_stops_appends_and_a_reopen_keeps_every_acknowledged_record() {
    for point in [
        FaultPoint::SegmentWrite,
        FaultPoint::SegmentSync,
        FaultPoint::SegmentCreate,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failing);
        let hook: FaultHook = Arc::new(move |p| {
            if p == point && flag.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected failure"));
            }
            Ok(())
        });
        {
            let log = MessageLog::open_with_faults(dir.path(), small(), hook).unwrap();
            log.append_blocking((0..3).map(|i| Record::to("e", payload(i, 1500))).collect())
                .unwrap();
            failing.store(true, Ordering::SeqCst);
            // Too big for what is left of the segment: this append starts a new one.
            let failed = log.append_blocking(vec![Record::to("e", payload(3, 3000))]);
            assert!(
                matches!(failed, Err(LogError::Io(_))),
                "at {point:?}: {failed:?}"
            );
            failing.store(false, Ordering::SeqCst);
            assert!(matches!(
                log.append_blocking(vec![Record::to("e", "refused")]),
                Err(LogError::Poisoned)
            ));
        }
        let log = open(dir.path());
        assert_eq!(
            seqs(&drain(&log.endpoint("e"))),
            vec![1, 2, 3],
            "at {point:?}"
        );
        assert_eq!(
            log.append_blocking(vec![Record::to("e", "again")]).unwrap(),
            vec![4]
        );
    }
}

#[test]
fn a_failed_segment_removal_leaves_consumed_records_consumed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let hook: FaultHook = Arc::new(|p| {
            if p == FaultPoint::SegmentRemove {
                return Err(io::Error::other("injected removal failure"));
            }
            Ok(())
        });
        let log = MessageLog::open_with_faults(dir.path(), small(), hook).unwrap();
        log.append_blocking((0..20).map(|i| Record::to("e", payload(i, 500))).collect())
            .unwrap();
        let endpoint = log.endpoint("e");
        ack_all(&endpoint, &drain(&endpoint));
        assert!(log.checkpoint_blocking().is_err());
    }
    let log = open(dir.path());
    assert!(drain(&log.endpoint("e")).is_empty());
    log.checkpoint_blocking().unwrap();
    assert_eq!(log.stats().segments, 1);
}

#[test]
fn a_failed_cursor_write_delivers_the_records_again_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for point in [FaultPoint::CursorWrite, FaultPoint::CursorRename] {
        let hook: FaultHook = Arc::new(move |p| {
            if p == point {
                return Err(io::Error::other("injected cursor failure"));
            }
            Ok(())
        });
        let log = MessageLog::open_with_faults(dir.path(), small(), hook).unwrap();
        if point == FaultPoint::CursorWrite {
            log.append_blocking((0..3).map(|i| Record::to("e", payload(i, 10))).collect())
                .unwrap();
        }
        let endpoint = log.endpoint("e");
        let read = drain(&endpoint);
        assert_eq!(seqs(&read), vec![1, 2, 3], "at {point:?}");
        ack_all(&endpoint, &read);
        assert!(log.checkpoint_blocking().is_err());
    }
    // Both failures left the acknowledgements unpersisted: at least once, never lost.
    let log = open(dir.path());
    assert_eq!(seqs(&drain(&log.endpoint("e"))), vec![1, 2, 3]);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert!(matches!(
        MessageLog::open(dir.path(), small()),
        Err(LogError::Locked(_))
    ));
    drop(log);
    open(dir.path());
}

#[test]
fn invalid_records_and_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert!(matches!(
        log.append_blocking(vec![Record::new("nowhere")]),
        Err(LogError::InvalidRecord(_))
    ));
    assert!(matches!(
        log.append_blocking(vec![Record::to("e", vec![0; 5 << 20])]),
        Err(LogError::InvalidRecord(_))
    ));
    assert_eq!(log.append_blocking(Vec::new()).unwrap(), Vec::<u64>::new());
    let bad = LogOptions {
        quota_bytes: 4096,
        ..small()
    };
    assert!(matches!(
        MessageLog::open(dir.path().join("other"), bad),
        Err(LogError::InvalidOptions(_))
    ));
}

/// Fsyncs held by a test: each one lasts until the test releases one, and tells the test when it starts.
///
/// Bind it after the log it holds, so that it is dropped first: a failed assertion then unwinds through its drop,
/// every held fsync returns, and the log's close (which joins the sync thread) finishes instead of hanging.
struct HeldFsyncs {
    release: std::sync::mpsc::Sender<()>,
    entered: std::sync::mpsc::Receiver<()>,
}

impl HeldFsyncs {
    /// The hook that holds every segment fsync, and the handle that releases them.
    fn new() -> (Self, FaultHook) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (enter, entered) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new((released, enter));
        let hook: FaultHook = Arc::new(move |point| {
            if point == FaultPoint::SegmentSync {
                let held = held.lock().unwrap();
                let _ = held.1.send(());
                // Bounded, so that no mistake in a test can hang the suite: a minute is far longer than any
                // test holds an fsync on purpose.
                let _ = held.0.recv_timeout(Duration::from_mins(1));
            }
            Ok(())
        });
        (Self { release, entered }, hook)
    }

    /// Lets one held fsync (or the next one) return.
    fn release(&self) {
        self.release.send(()).unwrap();
    }

    /// Waits until an fsync has started.
    fn entered(&self) {
        self.entered
            .recv_timeout(Duration::from_secs(10))
            .expect("an fsync started");
    }
}

/// An append made readable first: its endpoint reads the record while the group's fsync is still running, and the
/// appender hears `durable` only once that fsync returns. The sync thread runs beside the writer: meanwhile the
/// next group is written and read too, and its appender also waits for an fsync that covers its record.
#[test]
fn records_are_readable_during_their_fsync_and_durable_only_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (held, hook) = HeldFsyncs::new();
    let log = MessageLog::open_with_faults(dir.path(), small(), hook).unwrap();
    let held = held; // dropped before the log (see `HeldFsyncs`)
    let endpoint = log.endpoint("e");
    let runtime = runtime();
    runtime.block_on(async {
        let mut first = log.append_readable_first(vec![Record::to("e", payload(0, 100))]);
        first.readable().await.unwrap();
        let read = drain(&endpoint);
        assert_eq!(seqs(&read), vec![1]);
        assert_eq!(&read[0].payload[..], &payload(0, 100)[..]);
        // The first group's fsync is held from here on.
        held.entered();
        let mut second = log.append_readable_first(vec![Record::to("e", payload(1, 100))]);
        tokio::time::timeout(Duration::from_secs(10), second.readable())
            .await
            .expect("the second group waited for the first one's fsync")
            .unwrap();
        assert_eq!(seqs(&drain(&endpoint)), vec![2]);
        let mut first_durable = std::pin::pin!(first.durable());
        let mut second_durable = std::pin::pin!(second.durable());
        let neither = async {
            tokio::select! {
                _ = first_durable.as_mut() => false,
                _ = second_durable.as_mut() => false,
                () = tokio::time::sleep(Duration::from_millis(200)) => true,
            }
        };
        assert!(neither.await, "durable before any fsync returned");
        held.release();
        assert_eq!(first_durable.await.unwrap(), vec![1]);
        held.release();
        assert_eq!(second_durable.await.unwrap(), vec![2]);
    });
}

/// The writer runs at most `SYNC_QUEUE_RECORDS` records ahead of a stalled fsync, however small its groups: past
/// that it waits, so the replies held for a disk that does not answer stay bounded, and everything is answered once
/// the fsync returns. Until then, one record per group, the endpoint reads every group written.
#[test]
fn the_writer_runs_a_bounded_number_of_records_ahead_of_a_stalled_fsync() {
    const LIMIT: usize = super::writer::SYNC_QUEUE_RECORDS;
    let dir = tempfile::tempdir().unwrap();
    let (held, hook) = HeldFsyncs::new();
    // One segment holds them all (a roll syncs inline).
    let options = LogOptions {
        segment_bytes: 8 << 20,
        quota_bytes: 32 << 20,
        ..small()
    };
    let log = MessageLog::open_with_faults(dir.path(), options, hook).unwrap();
    let held = held; // dropped before the log (see `HeldFsyncs`)
    let endpoint = log.endpoint("e");
    let runtime = runtime();
    runtime.block_on(async {
        let append = |i| log.append_readable_first(vec![Record::to("e", payload(i, 10))]);
        let mut first = append(0);
        first.readable().await.unwrap();
        // The sync thread holds the first group alone in its fsync (nothing else was appended yet).
        held.entered();
        let mut appends = vec![first];
        // With the first record, LIMIT records are written and unanswered after group LIMIT - 1; group LIMIT is
        // written too, and the writer then waits to queue it.
        for i in 1..=LIMIT {
            let mut next = append(i);
            tokio::time::timeout(Duration::from_secs(10), next.readable())
                .await
                .unwrap_or_else(|_| panic!("group {} of {} written", i + 1, LIMIT + 1))
                .unwrap();
            appends.push(next);
        }
        assert_eq!(
            drain(&endpoint).len(),
            LIMIT + 1,
            "read while the fsync is held"
        );
        let mut over = append(LIMIT + 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), over.readable())
                .await
                .is_err(),
            "the writer ran more than {LIMIT} records ahead of the held fsync"
        );
        appends.push(over);
        for _ in 0..appends.len() {
            held.release();
        }
        for append in appends {
            assert_eq!(
                tokio::time::timeout(Duration::from_secs(10), append.durable())
                    .await
                    .expect("answered once the fsync returned")
                    .unwrap()
                    .len(),
                1
            );
        }
    });
}

/// The fsync fails after the endpoint read and acknowledged the record: the appender hears the failure (its sender
/// gets no PUBACK and sends again), and even if the record never reached the disk, the persisted cursor past it
/// does not make a reopened log treat the next record as consumed.
#[test]
fn a_record_read_before_a_failed_fsync_never_makes_a_later_record_look_consumed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let failing = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failing);
        let hook: FaultHook = Arc::new(move |point| {
            if point == FaultPoint::SegmentSync && flag.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected fsync failure"));
            }
            Ok(())
        });
        let log = MessageLog::open_with_faults(dir.path(), small(), hook).unwrap();
        log.append_blocking(vec![Record::to("e", payload(0, 10))])
            .unwrap();
        failing.store(true, Ordering::SeqCst);
        let endpoint = log.endpoint("e");
        let runtime = runtime();
        runtime.block_on(async {
            let mut append = log.append_readable_first(vec![Record::to("e", payload(1, 10))]);
            append.readable().await.unwrap();
            let read = drain(&endpoint);
            assert_eq!(seqs(&read), vec![1, 2]);
            ack_all(&endpoint, &read);
            assert!(matches!(append.durable().await, Err(LogError::Io(_))));
        });
        log.checkpoint_blocking().unwrap();
    }
    // The worst case: the page cache lost the unsynced record, the cursor file says 2 is consumed.
    let segment = dir.path().join(segment::file_name(1));
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    let kept = fs::metadata(&segment).unwrap().len()
        - Record::to("e", payload(1, 10)).encoded_len() as u64;
    file.set_len(kept).unwrap();
    drop(file);
    let log = open(dir.path());
    let endpoint = log.endpoint("e");
    assert!(drain(&endpoint).is_empty());
    let next = log
        .append_blocking(vec![Record::to("e", "sent again")])
        .unwrap();
    assert!(next[0] > 2, "{next:?} reuses a consumed sequence number");
    assert_eq!(seqs(&drain(&endpoint)), next);
}
