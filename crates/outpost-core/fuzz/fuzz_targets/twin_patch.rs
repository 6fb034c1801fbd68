//! Feeds arbitrary JSON to every twin write: none may panic, and a refused one must leave the twin exactly as it
//! was (the promise the hub's 400 answers rely on).
//!
//! Run with `cargo +nightly fuzz run twin_patch` from crates/outpost-core.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_core::Twin;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // Split the rest into a first patch that sets the twin up and a second one under test.
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(2, '\u{1}');
    let setup: Option<Value> = parts.next().and_then(|p| serde_json::from_str(p).ok());
    let Some(patch) = parts.next().and_then(|p| serde_json::from_str::<Value>(p).ok()) else { return };

    let now = chrono::Utc::now();
    let mut twin = Twin::new(now);
    if let Some(setup) = setup {
        let _ = twin.patch_desired(&setup, now);
        let _ = twin.patch_reported(&setup, now);
        let _ = twin.patch_tags(&setup);
    }
    let before = serde_json::to_string(&twin).expect("a twin serializes");
    let refused = match selector % 5 {
        0 => twin.patch_desired(&patch, now).is_err(),
        1 => twin.replace_desired(&patch, now).is_err(),
        2 => twin.patch_reported(&patch, now).is_err(),
        3 => twin.patch_tags(&patch).is_err(),
        _ => twin.replace_tags(&patch).is_err(),
    };
    if refused {
        assert_eq!(serde_json::to_string(&twin).expect("a twin serializes"), before);
    }
    let _ = twin.device_view();
    let _ = twin.properties_json();
});
