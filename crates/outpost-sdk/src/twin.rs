//! Twins as a client sees them, and the bookkeeping that makes sure no desired change is lost.
//!
//! The hub pushes desired patches only to a connected, subscribed client; what changes while the client is
//! away it never sends. `DesiredTracker` keeps the last desired document the application was given and its
//! `$version`. After every (re)connection the client reads the twin and the tracker turns the difference
//! into one patch; pushed patches the document already includes (by version) are dropped, so each change
//! reaches the application exactly once. It is pure: the driver feeds it and sends what it returns.

use serde_json::{Map, Value};

use crate::error::ClientError;

/// A device or module twin as its own client sees it: desired and reported properties with their versions
/// (tags and metadata are for the service side only).
///
/// ```
/// let twin = outpost_sdk::Twin::from_json(&serde_json::json!({
///     "desired": {"SendInterval": 5, "$version": 3},
///     "reported": {"$version": 1}
/// })).unwrap();
/// assert_eq!(twin.desired_version, 3);
/// assert_eq!(twin.desired["SendInterval"], 5);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Twin {
    /// Desired properties, without `$version`.
    pub desired: Map<String, Value>,
    /// The desired `$version`.
    pub desired_version: u64,
    /// Reported properties, without `$version`.
    pub reported: Map<String, Value>,
    /// The reported `$version`.
    pub reported_version: u64,
}

impl Twin {
    /// Reads the body of a twin GET response (`{"desired":{..,"$version":N},"reported":{..,"$version":M}}`).
    pub fn from_json(body: &Value) -> Result<Self, ClientError> {
        let section = |name: &str| -> Result<(Map<String, Value>, u64), ClientError> {
            let mut section = body
                .get(name)
                .and_then(Value::as_object)
                .cloned()
                .ok_or_else(|| ClientError::Protocol(format!("the twin has no {name} object")))?;
            let version = take_version(&mut section).ok_or_else(|| {
                ClientError::Protocol(format!("the twin's {name} section has no $version"))
            })?;
            section.remove("$metadata");
            Ok((section, version))
        };
        let (desired, desired_version) = section("desired")?;
        let (reported, reported_version) = section("reported")?;
        Ok(Self {
            desired,
            desired_version,
            reported,
            reported_version,
        })
    }
}

/// A change of desired properties, as the application receives it.
///
/// The first one a stream yields is the whole desired document (`complete` is true); later ones are patches
/// in IoT Hub's merge form: a key with `null` was deleted, an object merges into the object it replaces.
///
/// ```
/// use outpost_sdk::DesiredPatch;
/// let patch = DesiredPatch { version: 4, properties: serde_json::from_str(r#"{"SendData": false}"#).unwrap(), complete: false };
/// assert_eq!(patch.get("SendData"), Some(&serde_json::Value::Bool(false)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPatch {
    /// The desired `$version` after this change.
    pub version: u64,
    /// The changed properties (`null` = deleted), or the whole document when `complete`.
    pub properties: Map<String, Value>,
    /// Whether this is the whole desired document rather than a patch.
    pub complete: bool,
}

impl DesiredPatch {
    /// One property of the patch.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.properties.get(name)
    }
}

/// Removes and returns `$version` from a twin section.
fn take_version(section: &mut Map<String, Value>) -> Option<u64> {
    section.remove("$version").and_then(|v| v.as_u64())
}

/// The desired document the application has been given, and the patches that arrive while it is being
/// re-read.
#[derive(Debug, Default)]
pub(crate) struct DesiredTracker {
    /// `None` until the first twin read: nothing has been handed out yet.
    document: Option<Map<String, Value>>,
    version: u64,
    /// A twin GET is on its way; pushed patches wait for it.
    resyncing: bool,
    waiting: Vec<(u64, Map<String, Value>)>,
}

/// What the driver must do after the tracker saw a patch or a twin.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Step {
    /// Hand these to the application, in order.
    pub(crate) deliver: Vec<DesiredPatch>,
    /// A version was skipped: read the twin (the tracker counts the read as started).
    pub(crate) resync: bool,
}

impl DesiredTracker {
    /// Marks a twin read as started; false if one already is (it is resent with its connection).
    pub(crate) fn start_resync(&mut self) -> bool {
        !std::mem::replace(&mut self.resyncing, true)
    }

    /// The twin read failed; the next connection starts another.
    pub(crate) fn resync_failed(&mut self) {
        self.resyncing = false;
    }

    /// A desired patch pushed by the server (the body includes `$version`).
    pub(crate) fn on_patch(&mut self, body: &Value, topic_version: Option<u64>) -> Step {
        let Some(mut patch) = body.as_object().cloned() else {
            tracing::warn!("a desired patch that is not a JSON object was ignored");
            return Step::default();
        };
        let Some(version) = take_version(&mut patch).or(topic_version) else {
            tracing::warn!("a desired patch without $version; re-reading the twin");
            return self.ask_resync();
        };
        if self.document.is_none() || self.resyncing {
            self.waiting.push((version, patch));
            return Step::default();
        }
        let mut step = Step::default();
        self.apply(version, patch, &mut step);
        step
    }

    fn ask_resync(&mut self) -> Step {
        Step {
            deliver: Vec::new(),
            resync: self.start_resync(),
        }
    }

    /// Applies a patch on top of the document, or parks it and asks for a read if it skips a version.
    fn apply(&mut self, version: u64, patch: Map<String, Value>, step: &mut Step) {
        let Some(document) = &mut self.document else {
            self.waiting.push((version, patch));
            return;
        };
        if version <= self.version {
            return;
        }
        if version != self.version + 1 {
            self.waiting.push((version, patch));
            step.resync |= self.start_resync();
            return;
        }
        merge(document, &patch);
        self.version = version;
        step.deliver.push(DesiredPatch {
            version,
            properties: patch,
            complete: false,
        });
    }

    /// The answer to a twin read: the first one yields the whole document, later ones what changed since.
    /// Patches that waited for it follow; if they still skip a version, the step asks for another read.
    pub(crate) fn on_twin(&mut self, twin: &Twin) -> Step {
        self.resyncing = false;
        let mut step = Step::default();
        match &self.document {
            None => {
                step.deliver.push(DesiredPatch {
                    version: twin.desired_version,
                    properties: twin.desired.clone(),
                    complete: true,
                });
                self.document = Some(twin.desired.clone());
                self.version = twin.desired_version;
            }
            Some(document) if twin.desired_version > self.version => {
                let changes = diff(document, &twin.desired);
                if !changes.is_empty() {
                    step.deliver.push(DesiredPatch {
                        version: twin.desired_version,
                        properties: changes,
                        complete: false,
                    });
                }
                self.document = Some(twin.desired.clone());
                self.version = twin.desired_version;
            }
            Some(_) => {}
        }
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.sort_by_key(|(version, _)| *version);
        for (version, patch) in waiting {
            if self.resyncing {
                self.waiting.push((version, patch));
            } else {
                self.apply(version, patch, &mut step);
            }
        }
        step
    }
}

/// IoT Hub's merge: `null` deletes, an object merges into an object, anything else replaces.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match (value, target.get_mut(key)) {
            (Value::Null, _) => {
                target.remove(key);
            }
            (Value::Object(patch), Some(Value::Object(existing))) => merge(existing, patch),
            (value, _) => {
                target.insert(key.clone(), without_nulls(value));
            }
        }
    }
}

/// A value as it lands in a document: nulls inside new objects delete nothing and are not kept.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The merge patch that turns `old` into `new`.
fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(Value::Object(before)), Value::Object(after)) => {
                let inner = diff(before, after);
                if !inner.is_empty() {
                    patch.insert(key.clone(), Value::Object(inner));
                }
            }
            (Some(before), after) if before == after => {}
            (_, after) => {
                patch.insert(key.clone(), after.clone());
            }
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    fn twin(desired: Value) -> Twin {
        let mut body = json!({"reported": {"$version": 1}});
        body["desired"] = desired;
        Twin::from_json(&body).unwrap()
    }

    #[test]
    fn a_twin_read_drops_metadata_and_versions_from_the_sections() {
        let twin = twin(json!({"a": 1, "$version": 2, "$metadata": {}}));
        assert_eq!(Value::Object(twin.desired), json!({"a": 1}));
        assert_eq!((twin.desired_version, twin.reported_version), (2, 1));
    }

    fn delivered(step: Step) -> Vec<(u64, Value, bool)> {
        assert!(!step.resync, "asked for a resync");
        step.deliver
            .into_iter()
            .map(|p| (p.version, Value::Object(p.properties), p.complete))
            .collect()
    }

    #[test]
    fn a_twin_without_desired_version_is_a_protocol_error() {
        let error = Twin::from_json(&json!({"desired": {}, "reported": {"$version": 1}}));
        assert!(matches!(error, Err(ClientError::Protocol(_))));
    }

    #[test]
    fn the_first_twin_read_hands_out_the_whole_document() {
        let mut tracker = DesiredTracker::default();
        assert!(tracker.start_resync());
        let step = tracker.on_twin(&twin(json!({"a": 1, "$version": 3})));
        assert_eq!(delivered(step), vec![(3, json!({"a": 1}), true)]);
    }

    #[test]
    fn patches_pushed_before_the_first_read_wait_and_only_newer_ones_are_delivered() {
        let mut tracker = DesiredTracker::default();
        tracker.start_resync();
        assert_eq!(
            tracker.on_patch(&json!({"a": 1, "$version": 2}), Some(2)),
            Step::default()
        );
        assert_eq!(
            tracker.on_patch(&json!({"b": 1, "$version": 3}), Some(3)),
            Step::default()
        );
        let step = tracker.on_twin(&twin(json!({"a": 1, "$version": 2})));
        assert_eq!(
            delivered(step),
            vec![(2, json!({"a": 1}), true), (3, json!({"b": 1}), false)]
        );
    }

    #[test]
    fn consecutive_patches_are_delivered_and_old_ones_dropped() {
        let mut tracker = DesiredTracker::default();
        tracker.start_resync();
        tracker.on_twin(&twin(json!({"$version": 1})));
        let step = tracker.on_patch(&json!({"a": 1, "$version": 2}), None);
        assert_eq!(delivered(step), vec![(2, json!({"a": 1}), false)]);
        assert_eq!(
            tracker.on_patch(&json!({"a": 1, "$version": 2}), None),
            Step::default()
        );
    }

    #[test]
    fn a_skipped_version_asks_for_a_twin_read() {
        let mut tracker = DesiredTracker::default();
        tracker.start_resync();
        tracker.on_twin(&twin(json!({"$version": 1})));
        let step = tracker.on_patch(&json!({"b": 2, "$version": 3}), None);
        assert!(step.resync && step.deliver.is_empty());
        assert!(!tracker.start_resync(), "the read is already started");
        let step = tracker.on_twin(&twin(json!({"a": 1, "b": 2, "$version": 3})));
        assert_eq!(delivered(step), vec![(3, json!({"a": 1, "b": 2}), false)]);
    }

    #[test]
    fn a_reread_after_reconnecting_delivers_exactly_what_changed_once() {
        let mut tracker = DesiredTracker::default();
        tracker.start_resync();
        tracker.on_twin(&twin(
            json!({"keep": 1, "gone": 2, "nested": {"x": 1, "y": 2}, "$version": 4}),
        ));
        tracker.start_resync();
        let step = tracker.on_twin(&twin(
            json!({"keep": 1, "new": true, "nested": {"x": 1, "y": 3}, "$version": 6}),
        ));
        assert_eq!(
            delivered(step),
            vec![(
                6,
                json!({"new": true, "nested": {"y": 3}, "gone": null}),
                false
            )]
        );
        // The same twin again, and the pushes of versions 5 and 6 arriving late: nothing more.
        tracker.start_resync();
        assert!(delivered(tracker.on_twin(&twin(
            json!({"keep": 1, "new": true, "nested": {"x": 1, "y": 3}, "$version": 6})
        )))
        .is_empty());
        assert_eq!(
            tracker.on_patch(&json!({"new": true, "$version": 5}), None),
            Step::default()
        );
    }

    #[test]
    fn a_push_that_arrives_during_a_reread_is_delivered_after_it_if_newer() {
        let mut tracker = DesiredTracker::default();
        tracker.start_resync();
        tracker.on_twin(&twin(json!({"$version": 1})));
        tracker.start_resync();
        tracker.on_patch(&json!({"a": 2, "$version": 3}), None);
        let step = tracker.on_twin(&twin(json!({"a": 1, "$version": 2})));
        assert_eq!(
            delivered(step),
            vec![(2, json!({"a": 1}), false), (3, json!({"a": 2}), false)]
        );
    }

    #[test]
    fn merge_deletes_nulls_and_merges_objects() {
        let mut document = object(json!({"a": 1, "o": {"x": 1, "y": 2}, "d": 0}));
        merge(
            &mut document,
            &object(json!({"d": null, "o": {"y": null, "z": 3}, "n": {"k": null, "v": 1}})),
        );
        assert_eq!(
            Value::Object(document),
            json!({"a": 1, "o": {"x": 1, "z": 3}, "n": {"v": 1}})
        );
    }
}
