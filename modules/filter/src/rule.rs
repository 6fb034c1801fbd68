//! The filter's rule, pure: a reading goes on only if its machine temperature is above the threshold, and
//! the threshold comes from the desired property `TemperatureThreshold`.

use outpost_sdk::{DesiredPatch, Message};
use serde_json::Value;

/// The threshold until the twin says otherwise (°C).
pub const DEFAULT_THRESHOLD: f64 = 25.0;

/// The machine temperature of a reading (`{"machine":{"temperature":..}}`), if the body has one.
pub fn machine_temperature(body: &[u8]) -> Option<f64> {
    let reading: Value = serde_json::from_slice(body).ok()?;
    reading.get("machine")?.get("temperature")?.as_f64()
}

/// The message to forward for a reading: the same body, content type, encoding and custom properties,
/// marked `MessageType: Alert`; `None` when the reading is at or below the threshold or has no machine
/// temperature. Properties the gateway added on the way in (`inputName`, `connectionModuleId`...) are not
/// copied: the gateway sets them again for this module's output.
pub fn forward(message: &Message, threshold: f64) -> Option<Message> {
    let temperature = machine_temperature(message.body())?;
    if temperature <= threshold {
        return None;
    }
    let mut forwarded = Message::new(message.body().to_vec());
    for name in [
        "messageId",
        "correlationId",
        "contentType",
        "contentEncoding",
    ] {
        if let Some(value) = message.system_property(name) {
            forwarded = forwarded.with_system_property(name, value);
        }
    }
    for (name, value) in message.properties() {
        if let Some(value) = value {
            forwarded = forwarded.with_property(name.clone(), value.clone());
        }
    }
    Some(forwarded.with_property("MessageType", "Alert"))
}

/// The threshold after a desired change: the whole document starts from the default, `null` goes back
/// to it, a number sets it; anything else is logged and leaves it as it was.
pub fn threshold_after(current: f64, patch: &DesiredPatch) -> f64 {
    let base = if patch.complete {
        DEFAULT_THRESHOLD
    } else {
        current
    };
    match patch.get("TemperatureThreshold") {
        None => base,
        Some(Value::Null) => DEFAULT_THRESHOLD,
        Some(value) => value.as_f64().unwrap_or_else(|| {
            tracing::warn!(%value, "TemperatureThreshold must be a number; ignored");
            base
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reading(temperature: f64) -> Message {
        Message::json(&json!({
            "machine": {"temperature": temperature, "pressure": 1.0},
            "ambient": {"temperature": 21.0, "humidity": 25},
            "timeCreated": "2026-01-01T00:00:00Z"
        }))
        .with_property("sequenceNumber", "7")
        .with_system_property("connectionModuleId", "sensor")
        .with_system_property("inputName", "input1")
    }

    fn patch(properties: Value, complete: bool) -> DesiredPatch {
        let Value::Object(properties) = properties else {
            panic!("not an object")
        };
        DesiredPatch {
            version: 3,
            properties,
            complete,
        }
    }

    /// The threshold after a patch, in hundredths of a degree (exact to compare).
    fn after(current: f64, properties: Value, complete: bool) -> i64 {
        (threshold_after(current, &patch(properties, complete)) * 100.0).round() as i64
    }

    #[test]
    fn a_reading_above_the_threshold_is_forwarded_as_an_alert_with_its_properties() {
        let forwarded = forward(&reading(30.5), 25.0).unwrap();
        assert_eq!(forwarded.body(), reading(30.5).body());
        assert_eq!(forwarded.property("MessageType"), Some("Alert"));
        assert_eq!(forwarded.property("sequenceNumber"), Some("7"));
        assert_eq!(forwarded.content_type(), Some("application/json"));
        assert_eq!(forwarded.input_name(), None);
        assert_eq!(forwarded.connection_module_id(), None);
    }

    #[test]
    fn readings_at_or_below_the_threshold_are_dropped() {
        assert!(forward(&reading(25.0), 25.0).is_none());
        assert!(forward(&reading(-3.0), 25.0).is_none());
    }

    #[test]
    fn messages_without_a_machine_temperature_are_dropped() {
        assert!(forward(&Message::new("not json"), 0.0).is_none());
        assert!(forward(&Message::json(&json!({"machine": {}})), 0.0).is_none());
    }

    #[test]
    fn the_threshold_follows_the_desired_property() {
        assert_eq!(
            after(25.0, json!({"TemperatureThreshold": 30.5}), true),
            3050
        );
        assert_eq!(after(30.0, json!({"Other": 1}), false), 3000);
        assert_eq!(after(30.0, json!({}), true), 2500);
        assert_eq!(
            after(30.0, json!({"TemperatureThreshold": null}), false),
            2500
        );
        assert_eq!(
            after(30.0, json!({"TemperatureThreshold": "hot"}), false),
            3000
        );
    }
}
