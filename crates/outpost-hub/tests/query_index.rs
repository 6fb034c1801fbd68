//! The index that narrows fleet queries (`outpost_hub::storage::index`), on both engines: for a variety of
//! conditions, the twins a narrowed read lets through and the condition then accepts are exactly those a full
//! scan accepts, page after page, after updates and deletes; and the index does narrow.

mod pg_server;

use chrono::Utc;
use outpost_core::query::{Collection, Narrowing, QueryCondition};
use outpost_core::{DeviceId, ModuleId, Twin};
use outpost_hub::identity::{Credentials, DeviceRecord, IdentityStatus, ModuleRecord};
use outpost_hub::storage::postgres::PostgresEngine;
use outpost_hub::storage::sqlite::SqliteEngine;
use outpost_hub::storage::{Engine, Tables};
use outpost_hub::store::StorageError;
use serde_json::{json, Value};

fn write(engine: &dyn Engine, mut job: impl FnMut(&mut dyn Tables) -> Result<(), StorageError>) {
    engine
        .write_group(&mut |group| group.run(&mut |tables| job(tables).is_ok()))
        .expect("the group commits");
}

fn device(id: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: DeviceId::new(id).unwrap(),
        generation_id: "1".to_owned(),
        etag_counter: 1,
        status: IdentityStatus::Enabled,
        status_reason: None,
        status_updated: Utc::now(),
        credentials: Credentials::sas(None, None),
        iot_edge: false,
        device_scope: None,
        parent_scopes: Vec::new(),
    }
}

fn module(device: &str, id: &str) -> ModuleRecord {
    ModuleRecord {
        device_id: DeviceId::new(device).unwrap(),
        module_id: ModuleId::new(id).unwrap(),
        generation_id: "1".to_owned(),
        etag_counter: 1,
        managed_by: None,
        credentials: Credentials::sas(None, None),
    }
}

fn twin(tags: &Value, reported: &Value) -> Twin {
    let mut twin = Twin::new(Utc::now());
    twin.replace_tags(tags).unwrap();
    twin.patch_reported(reported, Utc::now()).unwrap();
    twin
}

/// The document a condition is evaluated on (the parts conditions here read).
fn document(device: &str, module: Option<&str>, twin: Option<&Twin>) -> Value {
    let empty = serde_json::Map::new();
    let mut document = json!({
        "deviceId": device,
        "tags": twin.map_or(&empty, Twin::tags),
        "properties": {"reported": twin.map_or(&empty, Twin::reported)},
    });
    if let Some(module) = module {
        document["moduleId"] = module.into();
    }
    document
}

/// A fleet of 60 devices with tags and reported properties of every kind, every third with a module; some
/// twins rewritten (the index must follow) and one device and one module deleted.
fn populate(engine: &dyn Engine) {
    let sites = ["north", "south", "east"];
    write(engine, |t| {
        for i in 0..60_u32 {
            let id = format!("dev-{i:02}");
            t.put_device(&device(&id))?;
            if i % 10 == 9 {
                continue; // no twin stored yet
            }
            let mixed = if i % 7 == 0 { json!("1") } else { json!(1) };
            let tags = json!({
                "site": sites[(i % 3) as usize],
                "rack": {"row": i % 4, "list": [i % 4]},
                "flag": i % 2 == 0,
                "n": f64::from(i % 5) * 0.5,
                "mixed": mixed,
                "gone": null,
            });
            let reported = json!({
                "fw": if i % 2 == 0 { "1.0" } else { "2.0" },
                "count": i % 3,
                "nested": {"ok": i % 2 == 1},
            });
            let dev = DeviceId::new(&id).unwrap();
            t.put_twin(&dev, None, &twin(&tags, &reported))?;
            if i % 3 == 0 {
                t.put_module(&module(&id, "m1"))?;
                let role = if i % 2 == 0 { "x" } else { "y" };
                let module_twin = twin(&json!({"role": role}), &json!({"v": i % 2}));
                t.put_twin(&dev, Some(&ModuleId::new("m1").unwrap()), &module_twin)?;
            }
        }
        // Rewritten: the old values must no longer find these.
        for i in [1_u32, 4, 7] {
            let dev = DeviceId::new(format!("dev-{i:02}")).unwrap();
            t.put_twin(
                &dev,
                None,
                &twin(
                    &json!({"site": "moved", "rack": {"row": 9}}),
                    &json!({"fw": "3.0"}),
                ),
            )?;
        }
        t.delete_device(&DeviceId::new("dev-02").unwrap())?;
        t.delete_module(
            &DeviceId::new("dev-03").unwrap(),
            &ModuleId::new("m1").unwrap(),
        )?;
        Ok(())
    });
}

/// The keys of the documents the condition accepts, read `page` at a time, narrowed or not; and how many
/// documents were read.
fn matching(
    engine: &dyn Engine,
    collection: Collection,
    condition: &QueryCondition,
    narrowed: bool,
    page: usize,
) -> (Vec<String>, usize) {
    let narrowing = if narrowed {
        condition.narrowing()
    } else {
        Narrowing::default()
    };
    let mut keys = Vec::new();
    let mut read = 0;
    let mut after: Option<(String, String)> = None;
    loop {
        let mut documents: Vec<(String, String, Value)> = Vec::new();
        engine
            .read(&mut |t| {
                documents = match collection {
                    Collection::Devices => t
                        .device_twins(after.as_ref().map(|(d, _)| d.as_str()), page, &narrowing)?
                        .into_iter()
                        .map(|(d, twin)| {
                            let id = d.device_id.to_string();
                            let doc = document(&id, None, twin.as_ref());
                            (id, String::new(), doc)
                        })
                        .collect(),
                    Collection::Modules => t
                        .module_twins(
                            after.as_ref().map(|(d, m)| (d.as_str(), m.as_str())),
                            page,
                            &narrowing,
                        )?
                        .into_iter()
                        .map(|(d, m, twin)| {
                            let (id, module) = (d.device_id.to_string(), m.module_id.to_string());
                            let doc = document(&id, Some(&module), twin.as_ref());
                            (id, module, doc)
                        })
                        .collect(),
                };
                Ok(())
            })
            .expect("the read succeeds");
        read += documents.len();
        for (device, module, document) in &documents {
            if condition.matches(document) {
                keys.push(format!("{device}/{module}"));
            }
        }
        if documents.len() < page {
            return (keys, read);
        }
        after = documents.last().map(|(d, m, _)| (d.clone(), m.clone()));
    }
}

const DEVICE_CONDITIONS: &[&str] = &[
    "tags.site = 'north'",
    "tags.site = 'moved'",
    "tags.site = 'north' AND properties.reported.fw = '2.0'",
    "tags.rack.row = 2",
    "tags.rack.row = 2.0",
    "tags.rack.row = 9",
    "tags.rack.list = 1",
    "tags.flag = true",
    "tags.flag = false AND tags.site != 'east'",
    "tags.n = 0.5",
    "tags.n = 1",
    "tags.mixed = 1",
    "tags.mixed = '1'",
    "tags.gone = null",
    "properties.reported.nested.ok = false",
    "properties.reported.fw = '3.0'",
    "properties.reported.count = 0 AND tags.n > 0",
    "deviceId = 'dev-03'",
    "deviceId = 'dev-02'",
    "deviceId IN ['dev-03', 'dev-04', 'nope'] AND tags.flag = true",
    "tags.site IN ['east', 'south'] AND tags.rack.row = 1",
    "tags.site = 'north' OR tags.site = 'east'",
    "NOT tags.site = 'north'",
    "tags.missing = 'x'",
    "tags.site = 'North'",
    "*",
];

const MODULE_CONDITIONS: &[&str] = &[
    "tags.role = 'x'",
    "properties.reported.v = 1 AND deviceId = 'dev-09'",
    "deviceId = 'dev-03'",
    "tags.role IN ['y']",
];

/// Narrowed and full reads accept the same twins for every condition, in pages of 7 and all at once.
fn narrowed_reads_find_what_a_full_scan_finds(engine: &dyn Engine) {
    populate(engine);
    let cases = DEVICE_CONDITIONS
        .iter()
        .map(|c| (Collection::Devices, *c))
        .chain(MODULE_CONDITIONS.iter().map(|c| (Collection::Modules, *c)));
    for (collection, text) in cases {
        let condition = QueryCondition::parse(text).unwrap();
        let (full, _) = matching(engine, collection, &condition, false, 1000);
        for page in [7, 1000] {
            let (narrowed, _) = matching(engine, collection, &condition, true, page);
            assert_eq!(narrowed, full, "{text} ({collection:?}, pages of {page})");
        }
    }
    // The index narrows: only candidates are read.
    let north = QueryCondition::parse("tags.site = 'north' AND tags.flag = true").unwrap();
    let (found, read) = matching(engine, Collection::Devices, &north, true, 1000);
    assert_eq!(read, found.len());
    assert!(!found.is_empty());
    let (_, read_all) = matching(engine, Collection::Devices, &north, false, 1000);
    assert_eq!(read_all, 59);
}

#[test]
fn narrowed_reads_find_what_a_full_scan_finds_on_sqlite() {
    narrowed_reads_find_what_a_full_scan_finds(&SqliteEngine::in_memory().unwrap());
}

#[test]
fn narrowed_reads_find_what_a_full_scan_finds_on_postgres() {
    let Some(server) = pg_server::Server::start() else {
        return;
    };
    let engine =
        PostgresEngine::connect(&server.database("query_index")).expect("the engine connects");
    narrowed_reads_find_what_a_full_scan_finds(&engine);
}
