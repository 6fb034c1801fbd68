//! The PostgreSQL engine on a real, throwaway PostgreSQL (`scripts/postgres.sh`, Debian's binaries).
//!
//! The scenarios are functions over `&dyn Engine`, so that the same checks can run on the SQLite engine: each
//! `#[test]` here gives one a fresh database of a shared server, which stops when the last test using it ends
//! (a drop guard, so also when a test fails). Without PostgreSQL's binaries the tests fail under `CI=true` and
//! are skipped, with a message, otherwise.

mod pg_server;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use outpost_core::{DeviceId, ModuleId, Twin};
use outpost_hub::fleet::rollout::{Event as RolloutEvent, Previous, Rollout};
use outpost_hub::fleet::{Assignment, Configuration};
use outpost_hub::identity::{
    AccessPolicy, Credentials, DeviceRecord, IdentityStatus, ModuleRecord,
};
use outpost_hub::storage::postgres::{PostgresEngine, MIGRATIONS};
use outpost_hub::storage::{Engine, Tables};
use outpost_hub::store::StorageError;
use outpost_hub::stream::{EventHubRecord, EventSource};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------------
// A throwaway server.

use pg_server::{free_port, Server};

/// The server the tests of this file share while any of them runs.
fn shared_server() -> Option<Arc<Server>> {
    static SHARED: Mutex<Weak<Server>> = Mutex::new(Weak::new());
    let mut shared = SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(server) = shared.upgrade() {
        return Some(server);
    }
    let server = Arc::new(Server::start()?);
    *shared = Arc::downgrade(&server);
    Some(server)
}

/// A fresh database on the shared server and an engine on it (the server lives as long as the guard).
fn fresh_engine(name: &str) -> Option<(Arc<Server>, String, PostgresEngine)> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let server = shared_server()?;
    let database = format!("{name}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let url = server.database(&database);
    let engine = PostgresEngine::connect(&url).expect("the engine connects");
    Some((server, url, engine))
}

// ---------------------------------------------------------------------------------------------------------
// Helpers over any engine.

/// Runs `job` as a group of one and commits it; panics if it fails.
fn write<T>(
    engine: &dyn Engine,
    mut job: impl FnMut(&mut dyn Tables) -> Result<T, StorageError>,
) -> T {
    let mut out = None;
    engine
        .write_group(&mut |group| {
            group.run(&mut |tables| match job(tables) {
                Ok(value) => {
                    out = Some(Ok(value));
                    true
                }
                Err(error) => {
                    out = Some(Err(error));
                    false
                }
            })
        })
        .expect("the group commits");
    out.expect("the job ran").expect("the job succeeds")
}

/// Runs `job` in a read.
fn read<T>(
    engine: &dyn Engine,
    mut job: impl FnMut(&mut dyn Tables) -> Result<T, StorageError>,
) -> T {
    let mut out = None;
    engine
        .read(&mut |tables| {
            out = Some(job(tables)?);
            Ok(())
        })
        .expect("the read succeeds");
    out.expect("the job ran")
}

fn id(device: &str) -> DeviceId {
    DeviceId::new(device).unwrap()
}

fn mid(module: &str) -> ModuleId {
    ModuleId::new(module).unwrap()
}

fn device_record(device: &str, etag_counter: u64) -> DeviceRecord {
    DeviceRecord {
        device_id: id(device),
        generation_id: "638000000000000000".to_owned(),
        etag_counter,
        status: IdentityStatus::Enabled,
        status_reason: None,
        status_updated: Utc::now(),
        credentials: Credentials::sas(None, None),
        iot_edge: false,
        device_scope: None,
        parent_scopes: Vec::new(),
    }
}

fn module_record(device: &str, module: &str) -> ModuleRecord {
    ModuleRecord {
        device_id: id(device),
        module_id: mid(module),
        generation_id: "1".to_owned(),
        etag_counter: 1,
        managed_by: None,
        credentials: Credentials::sas(None, None),
    }
}

fn append(engine: &dyn Engine, partition: u32, event: &Value, at: i64) -> i64 {
    write(engine, |t| {
        t.append_event(partition, EventSource::Telemetry, event, at)
    })
    .seq
}

fn all_seqs(engine: &dyn Engine) -> Vec<i64> {
    read(engine, |t| t.events_after(0, 10_000, true))
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Scenarios over `&dyn Engine` (SQLite can run them too).

/// Devices and modules round-trip, and deleting them takes what hangs off them, and nothing else.
pub fn registry_round_trips_and_cascading_deletes(engine: &dyn Engine) {
    write(engine, |t| {
        t.put_device(&device_record("b", 1))?;
        t.put_device(&device_record("a", 1))?;
        t.put_device(&device_record("ab", 1))?;
        t.put_module(&module_record("a", "m2"))?;
        t.put_module(&module_record("a", "m1"))?;
        t.put_twin(&id("a"), None, &Twin::new(Utc::now()))?;
        t.put_twin(&id("a"), Some(&mid("m1")), &Twin::new(Utc::now()))?;
        t.put_deployment(&id("a"), &json!({"modulesContent": {}}))?;
        t.enqueue_c2d(&id("a"), &json!({"body": "hi", "system": {}}))?;
        for client in ["a", "a/m1", "a/m2", "ab", "a0"] {
            t.put_session(client, &[format!("{client}/#")])?;
        }
        Ok(())
    });
    write(engine, |t| t.put_device(&device_record("b", 2)));

    let (devices, b, modules, ids, m1) = read(engine, |t| {
        Ok((
            t.devices()?,
            t.device(&id("b"))?,
            t.modules(&id("a"))?,
            t.module_ids(&id("a"))?,
            t.module(&id("a"), &mid("m1"))?,
        ))
    });
    let names: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(names, ["a", "ab", "b"]);
    assert_eq!(b.unwrap().etag_counter, 2, "a put replaces the record");
    let module_names: Vec<&str> = modules.iter().map(|m| m.module_id.as_str()).collect();
    assert_eq!(module_names, ["m1", "m2"]);
    assert_eq!(ids, HashSet::from(["m1".to_owned(), "m2".to_owned()]));
    assert_eq!(m1.unwrap().credentials, modules[0].credentials);

    assert!(write(engine, |t| t.delete_module(&id("a"), &mid("m1"))));
    let (m1, twin, session, device_twin) = read(engine, |t| {
        Ok((
            t.module(&id("a"), &mid("m1"))?,
            t.twin(&id("a"), Some(&mid("m1")))?,
            t.session("a/m1")?,
            t.twin(&id("a"), None)?,
        ))
    });
    assert!(m1.is_none() && twin.is_none() && session.is_empty());
    assert!(device_twin.is_some(), "the device's own twin stays");

    assert!(write(engine, |t| t.delete_device(&id("a"))));
    assert!(!write(engine, |t| t.delete_device(&id("a"))));
    read(engine, |t| {
        assert!(t.device(&id("a"))?.is_none());
        assert!(t.modules(&id("a"))?.is_empty());
        assert!(t.twin(&id("a"), None)?.is_none());
        assert!(t.deployment(&id("a"))?.is_none());
        assert!(t.pending_c2d(&id("a"))?.is_empty());
        assert!(t.session("a")?.is_empty());
        assert!(t.session("a/m2")?.is_empty());
        assert_eq!(t.session("ab")?, ["ab/#"], "another device's session stays");
        assert_eq!(t.session("a0")?, ["a0/#"]);
        assert!(t.device(&id("ab"))?.is_some());
        Ok(())
    });
}

/// Twins (device and module) and deployments round-trip whole, and a put replaces.
pub fn twins_and_deployments_round_trip(engine: &dyn Engine) {
    let now = Utc::now();
    let mut twin = Twin::new(now);
    twin.patch_desired(
        &json!({"speed": 3, "nested": {"b": 1, "a": [1, 2.5, "x", null]}}),
        now,
    )
    .unwrap();
    let module_twin = Twin::new(now);
    write(engine, |t| {
        t.put_device(&device_record("d", 1))?;
        t.put_module(&module_record("d", "m"))?;
        t.put_twin(&id("d"), None, &twin)?;
        t.put_twin(&id("d"), Some(&mid("m")), &module_twin)?;
        t.put_deployment(
            &id("d"),
            &json!({"modulesContent": {"$edgeAgent": {"v": 1}}}),
        )
    });
    let (stored, stored_module) = read(engine, |t| {
        Ok((t.twin(&id("d"), None)?, t.twin(&id("d"), Some(&mid("m")))?))
    });
    assert_eq!(stored.as_ref(), Some(&twin));
    assert_eq!(stored_module.as_ref(), Some(&module_twin));
    assert_eq!(stored.unwrap().desired_version(), 2);

    twin.patch_desired(&json!({"speed": null}), now).unwrap();
    write(engine, |t| {
        t.put_twin(&id("d"), None, &twin)?;
        t.put_deployment(
            &id("d"),
            &json!({"modulesContent": {"$edgeAgent": {"v": 2}}}),
        )
    });
    let (stored, deployment) = read(engine, |t| {
        Ok((t.twin(&id("d"), None)?, t.deployment(&id("d"))?))
    });
    assert_eq!(stored, Some(twin));
    assert_eq!(
        deployment,
        Some(json!({"modulesContent": {"$edgeAgent": {"v": 2}}}))
    );
    assert!(read(engine, |t| t.twin(&id("nobody"), None)).is_none());
}

/// Configurations round-trip by id, and a device's assignment is deleted with the device.
pub fn configurations_and_assignments_round_trip(engine: &dyn Engine) {
    let body = json!({"targetCondition": "tags.a = 1", "priority": 2,
                      "content": {"deviceContent": {"properties.desired.x": 1}}});
    let record = Configuration::from_request("c1", &body, None, Utc::now()).unwrap();
    let mut assignment = Assignment::default();
    assignment
        .twins
        .entry(String::new())
        .or_default()
        .paths
        .insert("x".into(), "c1".into());
    write(engine, |t| {
        t.put_configuration(&record)?;
        t.put_device(&device_record("d", 1))?;
        t.put_assignment(&id("d"), &assignment)
    });
    let (stored, all, assigned) = read(engine, |t| {
        Ok((
            t.configuration("c1")?,
            t.configurations()?,
            t.assignments()?,
        ))
    });
    assert_eq!(stored.as_ref(), Some(&record));
    assert_eq!(all, vec![record]);
    assert_eq!(assigned, vec![("d".to_owned(), assignment)]);
    write(engine, |t| {
        assert!(!t.delete_configuration("nothing")?);
        assert!(t.delete_configuration("c1")?);
        t.delete_device(&id("d")).map(|_| ())
    });
    let (stored, assigned) = read(engine, |t| Ok((t.configuration("c1")?, t.assignments()?)));
    assert!(stored.is_none());
    assert!(assigned.is_empty());
}

/// A rollout round-trips by deployment id, one owner holds its lease until it expires, and it is deleted with
/// its deployment.
pub fn rollouts_round_trip_with_their_lease(engine: &dyn Engine) {
    let body = json!({"targetCondition": "tags.a = 1",
                      "content": {"modulesContent": {"$edgeAgent": {"properties.desired.modules.m": {}}}},
                      "rollout": {"waves": ["1", "100%"], "healthyForSecs": 5, "waveTimeoutSecs": 60}});
    let record = Configuration::from_request("r1", &body, None, Utc::now()).unwrap();
    let mut rollout = Rollout::new("r1", record.rollout.clone().unwrap());
    rollout.handle(
        RolloutEvent::Start(vec![("d".into(), Previous::default())]),
        Utc::now(),
    );
    write(engine, |t| {
        t.put_configuration(&record)?;
        t.put_rollout(&rollout)
    });
    assert_eq!(read(engine, |t| t.rollout("r1")), Some(rollout.clone()));
    assert_eq!(read(engine, |t| t.rollouts()), vec![rollout]);
    let (first, other, renewed, expired) = write(engine, |t| {
        Ok((
            t.claim_rollout("r1", "a", 1_000, 2_000)?,
            t.claim_rollout("r1", "b", 1_500, 2_500)?,
            t.claim_rollout("r1", "a", 1_900, 3_000)?,
            t.claim_rollout("r1", "b", 3_001, 4_000)?,
        ))
    });
    assert!(first && !other && renewed && expired);
    write(engine, |t| t.delete_configuration("r1").map(|_| ()));
    assert!(read(engine, |t| t.rollouts()).is_empty());
}

/// Access policies and settings; `only_if_absent` keeps the first value.
pub fn policies_and_settings(engine: &dyn Engine) {
    let policies = AccessPolicy::defaults();
    write(engine, |t| {
        for policy in &policies {
            t.put_policy(policy)?;
        }
        Ok(())
    });
    let stored = read(engine, |t| t.policies());
    let mut names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        stored.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        names
    );
    assert!(write(engine, |t| t.put_setting("ca", b"first\0\xff", true)));
    assert!(!write(engine, |t| t.put_setting("ca", b"second", true)));
    assert_eq!(
        read(engine, |t| t.setting("ca")).as_deref(),
        Some(&b"first\0\xff"[..])
    );
    assert!(write(engine, |t| t.put_setting("ca", b"third", false)));
    assert_eq!(
        read(engine, |t| t.setting("ca")).as_deref(),
        Some(&b"third"[..])
    );
    assert_eq!(read(engine, |t| t.setting("missing")), None);
}

/// Several engines (replicas) store the same settings at once with `only_if_absent`: exactly one stores each.
pub fn settings_race_has_one_winner(engines: &[&dyn Engine]) {
    for round in 0..10 {
        let name = format!("race{round}");
        let barrier = Barrier::new(engines.len());
        let outcomes: Vec<bool> = std::thread::scope(|scope| {
            let threads: Vec<_> = engines
                .iter()
                .enumerate()
                .map(|(i, engine)| {
                    let (name, barrier) = (&name, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        write(*engine, |t| {
                            t.put_setting(name, format!("{i}").as_bytes(), true)
                        })
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..outcomes.len()).filter(|&i| outcomes[i]).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        for engine in engines {
            assert_eq!(
                read(*engine, |t| t.setting(&name)),
                Some(winners[0].to_string().into_bytes())
            );
        }
    }
}

/// MQTT sessions: stored, replaced, forgotten with an empty list.
pub fn sessions_round_trip(engine: &dyn Engine) {
    assert!(read(engine, |t| t.session("c")).is_empty());
    write(engine, |t| {
        t.put_session("c", &["a/#".to_owned(), "b".to_owned()])
    });
    assert_eq!(read(engine, |t| t.session("c")), ["a/#", "b"]);
    write(engine, |t| t.put_session("c", &["z".to_owned()]));
    assert_eq!(read(engine, |t| t.session("c")), ["z"]);
    write(engine, |t| t.put_session("c", &[]));
    assert!(read(engine, |t| t.session("c")).is_empty());
}

/// Events appended by several threads on several engines at once: offsets are unique, and each partition's
/// sequence numbers run 0, 1, 2… without a gap, in the order of the offsets.
pub fn concurrent_appends_keep_partition_sequences_contiguous(engines: &[&dyn Engine]) {
    const THREADS_PER_ENGINE: usize = 3;
    const GROUPS: usize = 15;
    const JOBS: usize = 4;
    let barrier = Barrier::new(engines.len() * THREADS_PER_ENGINE);
    std::thread::scope(|scope| {
        for (e, engine) in engines.iter().enumerate() {
            for thread in 0..THREADS_PER_ENGINE {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    for group in 0..GROUPS {
                        engine
                            .write_group(&mut |g| {
                                for job in 0..JOBS {
                                    let partition = u32::try_from(job % 2).unwrap();
                                    let event = json!({"engine": e, "thread": thread, "group": group, "job": job});
                                    g.run(&mut |t| {
                                        t.append_event(partition, EventSource::Telemetry, &event, 1_000)
                                            .is_ok()
                                    })?;
                                }
                                Ok(())
                            })
                            .expect("the group commits");
                    }
                });
            }
        }
    });
    let total = engines.len() * THREADS_PER_ENGINE * GROUPS * JOBS;
    let engine = engines[0];
    let seqs = all_seqs(engine);
    assert_eq!(seqs.len(), total);
    assert_eq!(
        seqs.iter().collect::<HashSet<_>>().len(),
        total,
        "offsets are unique"
    );
    assert_eq!(read(engine, |t| t.last_event()), *seqs.last().unwrap());
    for partition in 0..2 {
        let events = read(engine, |t| t.partition_events(partition, -1, 10_000));
        assert_eq!(events.len(), total / 2);
        for (i, event) in events.iter().enumerate() {
            assert_eq!(
                event.partition_seq,
                i64::try_from(i).unwrap(),
                "partition {partition}"
            );
        }
        assert!(
            events.windows(2).all(|w| w[0].offset < w[1].offset),
            "offsets grow with sequence numbers in partition {partition}"
        );
        let head = read(engine, |t| t.head(partition));
        assert_eq!(head.last_seq, i64::try_from(total / 2 - 1).unwrap());
        assert_eq!(head.last_offset, events.last().unwrap().offset);
    }
    let bytes: u64 = read(engine, |t| t.events_after(0, 10_000, true))
        .iter()
        .map(|(_, event)| serde_json::to_string(event).unwrap().len() as u64)
        .sum();
    assert_eq!(read(engine, |t| t.event_bytes()), bytes);
}

/// Where a receiver starts: by offset (inclusive or not), by time, the oldest kept, the head; and which sources
/// the REST stream sees.
pub fn positions_in_a_partition(engine: &dyn Engine) {
    write(engine, |t| {
        t.create_event_hub(&EventHubRecord {
            name: "hub".to_owned(),
            partitions: 2,
            created_ms: 5,
        })
    });
    assert_eq!(
        read(engine, |t| t.event_hub()),
        Some(EventHubRecord {
            name: "hub".to_owned(),
            partitions: 2,
            created_ms: 5
        })
    );
    let empty = read(engine, |t| t.head(1));
    assert_eq!(
        (empty.last_seq, empty.last_offset, empty.last_enqueued_ms),
        (-1, -1, 0)
    );
    // Offsets 1..=6: partitions 0, 1, 0, 1, 0, 1 at 1000, 2000, ... ms; the fourth is a twin change.
    let mut offsets = Vec::new();
    for i in 0..6u32 {
        let source = if i == 3 {
            EventSource::TwinChange
        } else {
            EventSource::Telemetry
        };
        let at = i64::from(i + 1) * 1_000;
        offsets.push(write(engine, |t| {
            t.append_event(i % 2, source, &json!({"i": i}), at)
        }));
    }
    assert_eq!(offsets[2].partition_seq, 1);
    let o = |i: usize| offsets[i].seq;
    read(engine, |t| {
        assert_eq!(t.first_from_offset(0, o(2), true)?, Some(1));
        assert_eq!(t.first_from_offset(0, o(2), false)?, Some(2));
        assert_eq!(t.first_from_offset(0, o(4), false)?, None);
        assert_eq!(t.first_from_offset(1, 0, true)?, Some(0));
        assert_eq!(t.first_after_time(0, 2_999)?, Some(1));
        assert_eq!(t.first_after_time(0, 3_000)?, Some(2));
        assert_eq!(t.first_after_time(0, 5_000)?, None);
        assert_eq!(t.first_kept(1)?, Some(0));
        let head = t.head(1)?;
        assert_eq!(
            (head.last_seq, head.last_offset, head.last_enqueued_ms),
            (2, o(5), 6_000)
        );
        let events = t.partition_events(1, 0, 10)?;
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].source, EventSource::TwinChange);
        assert_eq!(events[0].event, json!({"i": 3}));
        assert_eq!((events[1].partition_seq, events[1].offset), (2, o(5)));
        assert_eq!(t.partition_events(1, 0, 1)?.len(), 1);
        let telemetry: Vec<i64> = t.events_after(0, 100, false)?.iter().map(|e| e.0).collect();
        assert_eq!(telemetry, [o(0), o(1), o(2), o(4), o(5)]);
        assert_eq!(t.events_after(o(1), 2, true)?.len(), 2);
        Ok(())
    });
    write(engine, |t| t.prune_events(2_500, u64::MAX, 100));
    assert_eq!(read(engine, |t| t.first_kept(1)), Some(1));
    assert_eq!(read(engine, |t| t.first_kept(0)), Some(1));
}

/// Pruning by age, by size, a batch at a time; the offset counter survives pruning everything.
pub fn pruning_by_age_and_by_bytes(engine: &dyn Engine) {
    for at in [1_000, 2_000, 3_000, 4_000] {
        append(engine, 0, &json!({"at": at}), at);
    }
    assert_eq!(write(engine, |t| t.prune_events(3_000, u64::MAX, 100)), 2);
    assert_eq!(all_seqs(engine), [3, 4]);
    assert_eq!(write(engine, |t| t.prune_events(3_000, u64::MAX, 100)), 0);
    assert_eq!(write(engine, |t| t.prune_events(10_000, u64::MAX, 100)), 2);
    assert!(all_seqs(engine).is_empty());
    assert_eq!(read(engine, |t| t.event_bytes()), 0);
    assert_eq!(
        read(engine, |t| t.last_event()),
        4,
        "the counter survives pruning"
    );

    let event = json!({"body": "x".repeat(90)});
    let size = serde_json::to_string(&event).unwrap().len() as u64;
    for _ in 0..10 {
        append(engine, 1, &event, 20_000);
    }
    assert_eq!(read(engine, |t| t.event_bytes()), 10 * size);
    assert_eq!(
        write(engine, |t| t.prune_events(0, 3 * size + 1, 4)),
        4,
        "one batch"
    );
    assert_eq!(write(engine, |t| t.prune_events(0, 3 * size + 1, 100)), 3);
    assert_eq!(all_seqs(engine), [12, 13, 14]);
    assert_eq!(read(engine, |t| t.event_bytes()), 3 * size);
    assert_eq!(append(engine, 1, &json!({}), 30_000), 15);
    assert_eq!(
        read(engine, |t| t.head(1)).last_seq,
        10,
        "partition numbers go on"
    );
}

/// Cloud-to-device messages: queued in order, found by expiry, completed only for their device.
pub fn c2d_queue_expiry_and_completion(engine: &dyn Engine) {
    let message = |expiry: Option<&str>, body: &str| json!({"body": body, "system": {"absolute-expiry-time": expiry}});
    let (past, future, forever) = write(engine, |t| {
        t.put_device(&device_record("d", 1))?;
        t.put_device(&device_record("e", 1))?;
        Ok((
            t.enqueue_c2d(&id("d"), &message(Some("2024-05-01T10:00:00.000Z"), "1"))?,
            t.enqueue_c2d(&id("d"), &message(Some("2024-05-01T12:00:00+00:00"), "2"))?,
            t.enqueue_c2d(&id("e"), &message(None, "3"))?,
        ))
    });
    let eleven = 1_714_561_200_000; // 2024-05-01T11:00:00Z
    read(engine, |t| {
        assert_eq!(t.expired_c2d(eleven)?, [("d".to_owned(), past)]);
        assert_eq!(
            t.expired_c2d(eleven + 7_200_000)?,
            [("d".to_owned(), past), ("d".to_owned(), future)]
        );
        let pending = t.pending_c2d(&id("d"))?;
        assert_eq!(
            pending.iter().map(|p| p.0).collect::<Vec<_>>(),
            [past, future]
        );
        assert_eq!(
            pending[1].1,
            message(Some("2024-05-01T12:00:00+00:00"), "2")
        );
        assert_eq!(t.c2d_message(&id("e"), forever)?, Some(message(None, "3")));
        assert_eq!(
            t.c2d_message(&id("d"), forever)?,
            None,
            "not another device's"
        );
        assert_eq!(t.devices_with_c2d()?, ["d", "e"]);
        Ok(())
    });
    write(engine, |t| {
        t.complete_c2d(&id("e"), past)?; // another device's id: nothing happens
        t.complete_c2d(&id("d"), past)
    });
    read(engine, |t| {
        assert_eq!(t.pending_c2d(&id("d"))?.len(), 1);
        assert!(t.expired_c2d(eleven)?.is_empty());
        Ok(())
    });
}

/// Feedback: capped (the oldest go), locked in batches, unlocked by time, completed by token.
pub fn feedback_lock_complete_and_cap(engine: &dyn Engine) {
    for i in 0..5 {
        write(engine, |t| t.add_feedback(&json!({"n": i}), 100 + i, 3));
    }
    assert_eq!(read(engine, |t| t.feedback_count()), 3);
    let first = write(engine, |t| t.lock_feedback(7, 1_000, 2_000, 2)).unwrap();
    assert_eq!(
        first.records,
        [json!({"n": 2}), json!({"n": 3})],
        "the oldest kept, in order"
    );
    assert_eq!(first.enqueued_ms, 102);
    let second = write(engine, |t| t.lock_feedback(8, 1_000, 3_000, 5)).unwrap();
    assert_eq!(second.records, [json!({"n": 4})]);
    assert!(write(engine, |t| t.lock_feedback(9, 1_000, 3_000, 5)).is_none());
    assert_eq!(read(engine, |t| t.next_feedback_unlock(1_000)), Some(2_000));
    assert_eq!(read(engine, |t| t.next_feedback_unlock(3_000)), None);
    // Token 7's lock ran out: its records go to the next receiver.
    let again = write(engine, |t| t.lock_feedback(10, 2_000, 4_000, 5)).unwrap();
    assert_eq!(again.records.len(), 2);
    assert_eq!(
        write(engine, |t| t.complete_feedback(7)),
        0,
        "a lost lock completes nothing"
    );
    assert_eq!(write(engine, |t| t.complete_feedback(10)), 2);
    assert_eq!(read(engine, |t| t.feedback_count()), 1);
}

/// Consumer group names compare without case.
pub fn consumer_groups_ignore_case(engine: &dyn Engine) {
    assert!(write(engine, |t| t.create_consumer_group("Readers", 1)));
    assert!(!write(engine, |t| t.create_consumer_group("readers", 2)));
    assert!(write(engine, |t| t.create_consumer_group("archive", 3)));
    read(engine, |t| {
        assert!(t.consumer_group_exists("READERS")?);
        assert!(!t.consumer_group_exists("writers")?);
        assert_eq!(t.consumer_groups()?, ["archive", "Readers"]);
        Ok(())
    });
    assert!(write(engine, |t| t.delete_consumer_group("rEaDeRs")));
    assert!(!write(engine, |t| t.delete_consumer_group("readers")));
    assert_eq!(read(engine, |t| t.consumer_groups()), ["archive"]);
}

/// In one group, a job that returns false and a job whose statement fails are rolled back alone; the others
/// commit, and a rolled-back append leaves no gap in its partition.
pub fn a_failing_job_rolls_back_alone(engine: &dyn Engine) {
    let mut outcomes = Vec::new();
    engine
        .write_group(&mut |group| {
            group.run(&mut |t| t.put_device(&device_record("x", 1)).is_ok())?;
            group.run(&mut |t| t.put_device(&device_record("x2", 1)).is_ok())?;
            group.run(&mut |t| {
                t.put_device(&device_record("y", 1)).unwrap();
                t.append_event(0, EventSource::Telemetry, &json!({"job": "y"}), 1)
                    .unwrap();
                false
            })?;
            group.run(&mut |t| {
                // No such device: the twin's foreign key fails the statement.
                let failed = t.put_twin(&id("ghost"), None, &Twin::new(Utc::now()));
                outcomes.push(failed.is_err());
                false
            })?;
            group.run(&mut |t| {
                t.put_device(&device_record("z", 1)).unwrap();
                t.append_event(0, EventSource::Telemetry, &json!({"job": "z"}), 1)
                    .is_ok()
            })
        })
        .expect("the group commits");
    assert_eq!(outcomes, [true], "the foreign key is enforced");
    read(engine, |t| {
        assert!(t.device(&id("x"))?.is_some());
        assert!(t.device(&id("x2"))?.is_some());
        assert!(t.device(&id("y"))?.is_none());
        assert!(t.device(&id("z"))?.is_some());
        let events = t.partition_events(0, -1, 10)?;
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].partition_seq, &events[0].event),
            (0, &json!({"job": "z"}))
        );
        assert_eq!(t.event_bytes()?, 11);
        Ok(())
    });
}

/// A read-only view refuses writes.
pub fn reads_cannot_write(engine: &dyn Engine) {
    let result = engine.read(&mut |t| t.put_device(&device_record("r", 1)));
    assert!(result.is_err());
    assert!(read(engine, |t| t.device(&id("r"))).is_none());
}

// ---------------------------------------------------------------------------------------------------------
// The tests: each scenario on a fresh PostgreSQL database.

macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let Some((_server, _url, engine)) = fresh_engine(stringify!($name)) else { return };
            super::$name(&engine);
        }
    )*};
}

mod postgres_engine {
    on_postgres!(
        registry_round_trips_and_cascading_deletes,
        twins_and_deployments_round_trip,
        configurations_and_assignments_round_trip,
        rollouts_round_trip_with_their_lease,
        policies_and_settings,
        sessions_round_trip,
        positions_in_a_partition,
        pruning_by_age_and_by_bytes,
        c2d_queue_expiry_and_completion,
        feedback_lock_complete_and_cap,
        consumer_groups_ignore_case,
        a_failing_job_rolls_back_alone,
        reads_cannot_write,
    );

    use super::{fresh_engine, PostgresEngine};

    /// Three engines (as three replicas) on one database.
    fn replicas(name: &str) -> Option<(std::sync::Arc<super::Server>, Vec<PostgresEngine>)> {
        let (server, url, first) = fresh_engine(name)?;
        let mut engines = vec![first];
        for _ in 0..2 {
            engines.push(PostgresEngine::connect(&url).expect("a replica connects"));
        }
        Some((server, engines))
    }

    #[test]
    fn settings_race_has_one_winner() {
        let Some((_server, engines)) = replicas("settings_race") else {
            return;
        };
        let engines: Vec<&dyn super::Engine> = engines.iter().map(|e| e as _).collect();
        super::settings_race_has_one_winner(&engines);
    }

    #[test]
    fn concurrent_appends_keep_partition_sequences_contiguous() {
        let Some((_server, engines)) = replicas("appends") else {
            return;
        };
        let engines: Vec<&dyn super::Engine> = engines.iter().map(|e| e as _).collect();
        super::concurrent_appends_keep_partition_sequences_contiguous(&engines);
    }
}

// ---------------------------------------------------------------------------------------------------------
// PostgreSQL only: connecting, migrating, losing the database.

#[test]
fn migrations_are_applied_once_and_kept_across_reconnects() {
    let Some((_server, url, engine)) = fresh_engine("migrations") else {
        return;
    };
    let latest = i32::try_from(MIGRATIONS.len()).unwrap();
    assert_eq!(engine.schema_version().unwrap(), latest);
    write(&engine, |t| t.put_device(&device_record("kept", 1)));
    drop(engine);
    // Replicas starting together: every one migrates or finds the schema migrated, none fails.
    let engines: Vec<PostgresEngine> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| PostgresEngine::connect(&url).expect("reconnects")))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for engine in &engines {
        assert_eq!(engine.schema_version().unwrap(), latest);
        assert!(read(engine, |t| t.device(&id("kept"))).is_some());
    }
}

#[test]
fn replicas_starting_together_on_an_empty_database_migrate_it_once() {
    let Some(server) = shared_server() else {
        return;
    };
    let url = server.database("together");
    let engines: Vec<PostgresEngine> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| PostgresEngine::connect(&url).expect("connects")))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    write(&engines[0], |t| t.put_device(&device_record("one", 1)));
    assert_eq!(read(&engines[3], |t| t.devices()).len(), 1);
}

#[test]
fn connecting_to_a_closed_port_fails_within_seconds_with_a_clear_message() {
    let port = free_port();
    let started = Instant::now();
    let error = PostgresEngine::connect(&format!(
        "postgres://outpost:s3cret@127.0.0.1:{port}/outpost"
    ))
    .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, StorageError::Unavailable(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{port}/outpost")),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn a_url_that_is_not_a_database_url_is_refused() {
    let error = PostgresEngine::connect("mysql://root@localhost/db").expect_err("not postgres");
    assert!(matches!(error, StorageError::Postgres(_)), "{error:?}");
    assert!(error.to_string().contains("bad database URL"), "{error}");
}

#[test]
fn the_description_names_the_database_but_never_the_password() {
    let Some(server) = shared_server() else {
        return;
    };
    let url = server.database("described");
    let with_password = url.replace("outpost@", "outpost:hunter2@");
    let engine = PostgresEngine::connect(&with_password).expect("trust ignores the password");
    let described = engine.describe();
    assert_eq!(
        described,
        format!("postgres outpost@127.0.0.1:{}/described", server.port)
    );
    assert!(!format!("{engine:?}").contains("hunter2"));
}

#[test]
fn the_engine_works_from_spawn_blocking() {
    let Some((_server, _url, engine)) = fresh_engine("blocking") else {
        return;
    };
    let engine = Arc::new(engine);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let found = runtime.block_on(async {
        let writer = Arc::clone(&engine);
        tokio::task::spawn_blocking(move || {
            write(&*writer, |t| t.put_device(&device_record("async", 1)));
        })
        .await
        .unwrap();
        let reader = Arc::clone(&engine);
        tokio::task::spawn_blocking(move || read(&*reader, |t| t.device(&id("async"))))
            .await
            .unwrap()
    });
    assert!(found.is_some());
}

#[test]
fn the_engine_connects_reads_and_drops_on_the_workers_of_a_multi_thread_runtime() {
    let Some(server) = shared_server() else {
        return;
    };
    let url = server.database("on_workers");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let found = runtime.block_on(async move {
        // As the hub starts, and as the AMQP head's synchronous methods read: on async workers.
        let engine = PostgresEngine::connect(&url).expect("connects from async code");
        tokio::spawn(async move {
            write(&engine, |t| t.put_device(&device_record("w", 1)));
            let found = read(&engine, |t| t.device(&id("w")));
            drop(engine);
            found
        })
        .await
        .unwrap()
    });
    assert!(found.is_some());
}

#[test]
fn a_lost_database_is_unavailable_and_the_engine_recovers_when_it_returns() {
    // Its own server: this test stops it.
    let Some(server) = Server::start() else {
        return;
    };
    let engine = PostgresEngine::connect(&server.url("outpost")).expect("connects");
    write(&engine, |t| t.put_device(&device_record("before", 1)));

    server.run("stop");
    let started = Instant::now();
    let error = engine
        .read(&mut |t| t.device(&id("before")).map(drop))
        .expect_err("the database is gone");
    assert!(matches!(error, StorageError::Unavailable(_)), "{error:?}");
    let error = engine
        .write_group(&mut |g| g.run(&mut |t| t.put_device(&device_record("during", 1)).is_ok()))
        .expect_err("the database is gone");
    assert!(matches!(error, StorageError::Unavailable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    server.run("start");
    // The pooled connections died with the server: the first request after it returns already succeeds.
    assert!(read(&engine, |t| t.device(&id("before"))).is_some());
    write(&engine, |t| t.put_device(&device_record("after", 1)));
    assert_eq!(read(&engine, |t| t.devices()).len(), 2);
}

#[test]
fn events_copied_without_partitions_get_theirs_in_order_and_appends_go_on_after_them() {
    let Some((_server, url, engine)) = fresh_engine("assign") else {
        return;
    };
    // Events as `outpost hub migrate` copies them from a hub that had no partitions yet.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    for (seq, device) in [(1_i64, "a"), (2, "b"), (3, "a"), (4, "a")] {
        let event = format!(r#"{{"deviceId":"{device}"}}"#);
        client
            .execute(
                "INSERT INTO events (seq, enqueued_ms, bytes, event) VALUES ($1, $2, $3, $4)",
                &[
                    &seq,
                    &(seq * 1_000),
                    &i64::try_from(event.len()).unwrap(),
                    &event,
                ],
            )
            .unwrap();
    }
    client
        .execute("UPDATE event_totals SET last_seq = 4 WHERE id = 0", &[])
        .unwrap();
    let partition = |device: &str| outpost_hub::stream::partition_of(device, 4);
    assert_eq!(write(&engine, |t| t.assign_partitions(4)), 4);
    assert_eq!(write(&engine, |t| t.assign_partitions(4)), 0, "once");
    let a = read(&engine, |t| t.partition_events(partition("a"), -1, 10));
    let offsets: Vec<(i64, i64)> = a.iter().map(|e| (e.partition_seq, e.offset)).collect();
    if partition("a") == partition("b") {
        assert_eq!(offsets, [(0, 1), (1, 2), (2, 3), (3, 4)]);
    } else {
        assert_eq!(offsets, [(0, 1), (1, 3), (2, 4)]);
    }
    let next = write(&engine, |t| {
        t.append_event(
            partition("a"),
            EventSource::Telemetry,
            &json!({"deviceId": "a"}),
            9_000,
        )
    });
    assert_eq!(next.seq, 5);
    assert_eq!(next.partition_seq, i64::try_from(a.len()).unwrap());
}

#[test]
fn replicas_creating_the_event_hub_together_keep_the_first_record() {
    let Some((_server, url, engine)) = fresh_engine("event_hub") else {
        return;
    };
    let other = PostgresEngine::connect(&url).unwrap();
    let record = |partitions| EventHubRecord {
        name: "hub".to_owned(),
        partitions,
        created_ms: 1,
    };
    write(&engine, |t| t.create_event_hub(&record(4)));
    write(&other, |t| t.create_event_hub(&record(8)));
    assert_eq!(read(&other, |t| t.event_hub()), Some(record(4)));
}

#[test]
fn a_job_that_goes_on_after_a_failed_statement_fails_its_group() {
    let Some((_server, _url, engine)) = fresh_engine("went_on") else {
        return;
    };
    let error = engine
        .write_group(&mut |group| {
            group.run(&mut |t| t.put_device(&device_record("first", 1)).is_ok())?;
            group.run(&mut |t| {
                let _ = t.put_twin(&id("ghost"), None, &Twin::new(Utc::now()));
                true
            })
        })
        .expect_err("PostgreSQL discarded the job's work: the group must not commit");
    assert!(matches!(error, StorageError::Postgres(_)), "{error:?}");
    assert!(read(&engine, |t| t.device(&id("first"))).is_none());
}

#[test]
fn a_deadlock_between_replicas_fails_one_job_as_unavailable_and_both_groups_commit() {
    let Some((_server, url, a)) = fresh_engine("deadlock") else {
        return;
    };
    let b = PostgresEngine::connect(&url).unwrap();
    write(&a, |t| t.put_device(&device_record("x", 1)));
    let twin = Twin::new(Utc::now());
    let barrier = Barrier::new(2);
    // Replica A appends (the event counter's lock) then writes the twin; replica B the other way round.
    let errors: Vec<Option<StorageError>> = std::thread::scope(|scope| {
        let engines: [(&PostgresEngine, bool); 2] = [(&a, true), (&b, false)];
        let threads: Vec<_> = engines
            .into_iter()
            .map(|(engine, event_first)| {
                let (barrier, twin) = (&barrier, &twin);
                scope.spawn(move || {
                    let mut error = None;
                    let mut step = |t: &mut dyn Tables, event: bool| {
                        let result = if event {
                            t.append_event(0, EventSource::Telemetry, &json!({}), 1)
                                .map(drop)
                        } else {
                            t.put_twin(&id("x"), None, twin)
                        };
                        result.map_err(|e| error = Some(e)).is_ok()
                    };
                    engine
                        .write_group(&mut |group| {
                            group.run(&mut |t| step(t, event_first))?;
                            barrier.wait();
                            group.run(&mut |t| step(t, !event_first))
                        })
                        .expect("the group commits");
                    error
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let failed: Vec<&StorageError> = errors.iter().flatten().collect();
    assert_eq!(failed.len(), 1, "{errors:?}");
    assert!(
        matches!(failed[0], StorageError::Unavailable(m) if m.contains("40P01")),
        "{failed:?}"
    );
    // A's event always stays; B's unless B's second job was the one chosen to fail.
    let events = if errors[1].is_some() { 1 } else { 2 };
    assert_eq!(all_seqs(&a).len(), events);
}

#[test]
fn configurations_and_assignments_round_trip_on_sqlite() {
    let engine = outpost_hub::storage::sqlite::SqliteEngine::in_memory().unwrap();
    configurations_and_assignments_round_trip(&engine);
}

#[test]
fn rollouts_round_trip_with_their_lease_on_sqlite() {
    let engine = outpost_hub::storage::sqlite::SqliteEngine::in_memory().unwrap();
    rollouts_round_trip_with_their_lease(&engine);
}
