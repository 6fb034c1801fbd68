//! Feeds arbitrary bytes to the MQTT decoder: it must never panic, and whatever it decodes must re-encode
//! and decode to the same packet.
//!
//! Run with `cargo +nightly fuzz run mqtt_decode` from crates/outpost-mqtt.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small maximum size now and then, to exercise the size check.
    let max_size = match data.first() {
        Some(b) if b % 8 == 0 => usize::from(*b) * 4,
        _ => 1 << 20,
    };
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = outpost_mqtt::decode(&mut buf, max_size) {
        let mut wire = BytesMut::new();
        outpost_mqtt::encode(&packet, &mut wire).expect("a decoded packet encodes");
        let again = outpost_mqtt::decode(&mut wire, usize::MAX).expect("an encoded packet decodes");
        assert_eq!(again, Some(packet));
    }
});
