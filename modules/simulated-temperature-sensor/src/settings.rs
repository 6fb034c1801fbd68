//! The module's desired properties: `SendInterval` (seconds between messages) and `SendData` (whether to
//! send at all), and what it reports back once it applies them.

use std::time::Duration;

use outpost_sdk::DesiredPatch;
use serde_json::{json, Value};

/// Messages go out this often unless `SendInterval` says otherwise.
pub const DEFAULT_SEND_INTERVAL: Duration = Duration::from_secs(5);

/// The settings in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Time between two messages.
    pub send_interval: Duration,
    /// Whether messages are sent.
    pub send_data: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            send_interval: DEFAULT_SEND_INTERVAL,
            send_data: true,
        }
    }
}

impl Settings {
    /// Applies a desired change: the whole document starts from the defaults; a patch changes what it
    /// names, and `null` puts a setting back to its default. A value of the wrong type is logged and
    /// ignored.
    pub fn apply(&mut self, patch: &DesiredPatch) {
        if patch.complete {
            *self = Self::default();
        }
        match patch.get("SendInterval") {
            None => {}
            Some(Value::Null) => self.send_interval = DEFAULT_SEND_INTERVAL,
            Some(value) => {
                if let Some(seconds) = value.as_f64().filter(|s| (0.1..=86_400.0).contains(s)) {
                    self.send_interval = Duration::from_secs_f64(seconds);
                } else {
                    tracing::warn!(%value, "SendInterval must be seconds between 0.1 and 86400; ignored");
                }
            }
        }
        match patch.get("SendData") {
            None => {}
            Some(Value::Null) => self.send_data = true,
            Some(Value::Bool(send)) => self.send_data = *send,
            Some(value) => tracing::warn!(%value, "SendData must be true or false; ignored"),
        }
    }

    /// The reported properties that say what the module applies.
    pub fn reported(&self) -> Value {
        json!({
            "SendInterval": self.send_interval.as_secs_f64(),
            "SendData": self.send_data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(properties: Value, complete: bool) -> DesiredPatch {
        let Value::Object(properties) = properties else {
            panic!("not an object")
        };
        DesiredPatch {
            version: 2,
            properties,
            complete,
        }
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let mut settings = Settings::default();
        settings.apply(&patch(json!({"SendInterval": 2}), false));
        assert_eq!(settings.send_interval, Duration::from_secs(2));
        settings.apply(&patch(json!({"SendData": false}), false));
        assert_eq!(
            settings,
            Settings {
                send_interval: Duration::from_secs(2),
                send_data: false
            }
        );
    }

    #[test]
    fn the_whole_document_and_null_go_back_to_the_defaults() {
        let mut settings = Settings {
            send_interval: Duration::from_secs(1),
            send_data: false,
        };
        settings.apply(&patch(json!({}), true));
        assert_eq!(settings, Settings::default());
        settings.apply(&patch(
            json!({"SendInterval": 0.5, "SendData": false}),
            false,
        ));
        settings.apply(&patch(
            json!({"SendInterval": null, "SendData": null}),
            false,
        ));
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn values_of_the_wrong_type_or_range_are_ignored() {
        let mut settings = Settings::default();
        settings.apply(&patch(
            json!({"SendInterval": "fast", "SendData": "yes"}),
            false,
        ));
        settings.apply(&patch(json!({"SendInterval": 0}), false));
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn what_is_applied_is_reported() {
        let settings = Settings {
            send_interval: Duration::from_millis(1500),
            send_data: false,
        };
        assert_eq!(
            settings.reported(),
            json!({"SendInterval": 1.5, "SendData": false})
        );
    }
}
