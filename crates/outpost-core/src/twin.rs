//! Twin documents (AZURE-COMPAT §3): tags, desired and reported sections, patch and replace rules, limits.
//!
//! Every change is computed on copies and checked against the limits (`twin/limits.rs`) before anything is
//! written, so a refused change leaves the twin exactly as it was: no version bump, no metadata change.

mod limits;
mod metadata;
#[cfg(test)]
mod tests;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::limits::{check_depth, check_section, MAX_DEPTH};
use self::metadata::Stamp;

/// The version field of a section, as it appears in twin JSON.
const VERSION: &str = "$version";
/// The metadata field of a section, as it appears in twin JSON.
const METADATA: &str = "$metadata";

/// Why a twin change is refused; a refused change leaves the twin as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    /// A patch or document that must be a JSON object is not one.
    #[error("twin properties must be a JSON object")]
    NotAnObject,
    /// The result nests objects more deeply than allowed.
    #[error("twin document is nested {depth} levels deep, at most 10 are allowed")]
    TooDeep {
        /// The depth reached.
        depth: usize,
    },
    /// A key breaks the key rules.
    #[error("illegal twin key {key:?}: {reason}")]
    IllegalKey {
        /// The refused key.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A string value is longer than 4 KB.
    #[error("twin string value of {len} bytes exceeds 4096")]
    StringTooLong {
        /// Length in bytes.
        len: usize,
    },
    /// A number is not an integer within ±4503599627370495, or not representable.
    #[error("twin integer out of range")]
    IntegerOutOfRange,
    /// A section would exceed its size limit.
    #[error("twin {section} would be {size} bytes, the limit is {limit}")]
    SectionTooLarge {
        /// `tags`, `desired` or `reported`.
        section: &'static str,
        /// The computed size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Reported properties can only be written by the device.
    #[error("reported properties are not writable here")]
    ReportedNotWritable,
}

/// One of the desired or reported sections: properties, `$version` and the `$metadata` tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinSection {
    properties: Map<String, Value>,
    version: u64,
    metadata: Map<String, Value>,
}

impl TwinSection {
    fn new(stamp: &Stamp) -> Self {
        Self {
            properties: Map::new(),
            version: 1,
            metadata: stamp.node(),
        }
    }

    /// The properties, without `$version` and `$metadata`.
    pub fn properties(&self) -> &Map<String, Value> {
        &self.properties
    }

    /// The section's `$version`.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The `$metadata` tree.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// The properties plus `$version` (what devices see).
    fn with_version(&self) -> Value {
        let mut body = self.properties.clone();
        body.insert(VERSION.to_owned(), Value::from(self.version));
        Value::Object(body)
    }

    /// The properties plus `$metadata` and `$version` (what the service REST API shows).
    fn with_metadata(&self) -> Value {
        let mut body = self.properties.clone();
        body.insert(METADATA.to_owned(), Value::Object(self.metadata.clone()));
        body.insert(VERSION.to_owned(), Value::from(self.version));
        Value::Object(body)
    }

    /// The section a merge patch would produce, checked against `limit`.
    fn patched(
        &self,
        name: &'static str,
        patch: &Map<String, Value>,
        limit: usize,
        stamp_of: impl Fn(u64) -> Stamp,
    ) -> Result<Self, TwinError> {
        let mut properties = self.properties.clone();
        merge(&mut properties, patch);
        check_section(name, &properties, limit)?;
        let version = self.version.saturating_add(1);
        let mut metadata = self.metadata.clone();
        metadata::merge_patch(&mut metadata, patch, &properties, &stamp_of(version));
        Ok(Self {
            properties,
            version,
            metadata,
        })
    }

    /// The section a full replace would produce, checked against `limit`.
    fn replaced(
        &self,
        name: &'static str,
        properties: Map<String, Value>,
        limit: usize,
        stamp_of: impl Fn(u64) -> Stamp,
    ) -> Result<Self, TwinError> {
        check_section(name, &properties, limit)?;
        let version = self.version.saturating_add(1);
        let metadata = metadata::replace(
            &self.metadata,
            &self.properties,
            &properties,
            &stamp_of(version),
        );
        Ok(Self {
            properties,
            version,
            metadata,
        })
    }
}

/// A device or module twin.
///
/// Serialized as its own storage format (tags, both sections with their metadata, and the change counter);
/// the JSON shapes of the wire are built by [`Twin::device_view`] and [`Twin::properties_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    tags: Map<String, Value>,
    desired: TwinSection,
    reported: TwinSection,
    change_counter: u64,
}

impl Twin {
    /// A fresh twin: empty sections at `$version` 1 (as IoT Hub), etag counter 1.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            tags: Map::new(),
            desired: TwinSection::new(&Stamp::new(now, Some(1))),
            reported: TwinSection::new(&Stamp::new(now, None)),
            change_counter: 1,
        }
    }

    /// Merges a desired patch (`null` deletes); returns the notification body: the patch plus `$version`.
    ///
    /// A top-level `$version` or `$metadata` in the patch is ignored (some clients echo what they read).
    pub fn patch_desired(&mut self, patch: &Value, now: DateTime<Utc>) -> Result<Value, TwinError> {
        let patch = section_body(patch)?;
        let desired = self
            .desired
            .patched("desired", &patch, limits::DESIRED_LIMIT, |v| {
                Stamp::new(now, Some(v))
            })?;
        let mut notification = patch;
        notification.insert(VERSION.to_owned(), Value::from(desired.version));
        self.desired = desired;
        self.bump();
        Ok(Value::Object(notification))
    }

    /// Replaces the desired properties; returns the full new desired plus `$version`.
    pub fn replace_desired(
        &mut self,
        desired: &Value,
        now: DateTime<Utc>,
    ) -> Result<Value, TwinError> {
        let body = section_body(desired)?;
        let desired = self
            .desired
            .replaced("desired", body, limits::DESIRED_LIMIT, |v| {
                Stamp::new(now, Some(v))
            })?;
        let notification = desired.with_version();
        self.desired = desired;
        self.bump();
        Ok(notification)
    }

    /// Merges a reported patch (`null` deletes); returns the new reported `$version`.
    pub fn patch_reported(&mut self, patch: &Value, now: DateTime<Utc>) -> Result<u64, TwinError> {
        let patch = section_body(patch)?;
        let reported = self
            .reported
            .patched("reported", &patch, limits::REPORTED_LIMIT, |_| {
                Stamp::new(now, None)
            })?;
        let version = reported.version;
        self.reported = reported;
        self.bump();
        Ok(version)
    }

    /// Merges a tags patch (`null` deletes).
    pub fn patch_tags(&mut self, patch: &Value) -> Result<(), TwinError> {
        let patch = tags_body(patch)?;
        let mut tags = self.tags.clone();
        merge(&mut tags, &patch);
        check_section("tags", &tags, limits::TAGS_LIMIT)?;
        self.tags = tags;
        self.bump();
        Ok(())
    }

    /// Replaces the tags.
    pub fn replace_tags(&mut self, tags: &Value) -> Result<(), TwinError> {
        let tags = tags_body(tags)?;
        check_section("tags", &tags, limits::TAGS_LIMIT)?;
        self.tags = tags;
        self.bump();
        Ok(())
    }

    /// The desired `$version`.
    pub fn desired_version(&self) -> u64 {
        self.desired.version
    }

    /// The reported `$version`.
    pub fn reported_version(&self) -> u64 {
        self.reported.version
    }

    /// The twin etag: base64 of the 8-byte big-endian change counter (`AAAAAAAAAAE=` for a new twin).
    pub fn etag(&self) -> String {
        STANDARD.encode(self.change_counter.to_be_bytes())
    }

    /// The twin `version`: bumps on every change.
    pub fn version(&self) -> u64 {
        self.change_counter
    }

    /// The tags.
    pub fn tags(&self) -> &Map<String, Value> {
        &self.tags
    }

    /// The MQTT twin GET body: `{"desired":{..,"$version":N},"reported":{..,"$version":M}}`, no tags, no metadata.
    pub fn device_view(&self) -> Value {
        let mut view = Map::new();
        view.insert("desired".to_owned(), self.desired.with_version());
        view.insert("reported".to_owned(), self.reported.with_version());
        Value::Object(view)
    }

    /// The REST `properties` object: both sections with `$metadata` and `$version`.
    pub fn properties_json(&self) -> Value {
        let mut properties = Map::new();
        properties.insert("desired".to_owned(), self.desired.with_metadata());
        properties.insert("reported".to_owned(), self.reported.with_metadata());
        Value::Object(properties)
    }

    /// The desired properties (without `$version` and `$metadata`).
    pub fn desired(&self) -> &Map<String, Value> {
        &self.desired.properties
    }

    /// The reported properties (without `$version` and `$metadata`).
    pub fn reported(&self) -> &Map<String, Value> {
        &self.reported.properties
    }

    /// The desired section with its version and metadata.
    pub fn desired_section(&self) -> &TwinSection {
        &self.desired
    }

    /// The reported section with its version and metadata.
    pub fn reported_section(&self) -> &TwinSection {
        &self.reported
    }

    fn bump(&mut self) {
        self.change_counter = self.change_counter.saturating_add(1);
    }
}

/// The object of a desired or reported patch or document, without the `$version` and `$metadata` a client
/// may have echoed at its top level.
fn section_body(value: &Value) -> Result<Map<String, Value>, TwinError> {
    let mut body = tags_body(value)?;
    body.shift_remove(VERSION);
    body.shift_remove(METADATA);
    Ok(body)
}

/// The object of a patch or document, refused early when too deeply nested.
///
/// Every object of a merge patch survives into the result (only `null`s are dropped), so a patch that is too
/// deep always gives a result that is too deep; checking first also bounds the merge's recursion.
fn tags_body(value: &Value) -> Result<Map<String, Value>, TwinError> {
    let Value::Object(body) = value else {
        return Err(TwinError::NotAnObject);
    };
    check_depth(body, MAX_DEPTH)?;
    Ok(body.clone())
}

/// JSON merge patch (RFC 7386): `null` deletes, objects merge, anything else replaces. The keys that stay keep
/// their order and new keys come last, as IoT Hub shows a twin; every copy of a twin (the hub's, the edge's cache)
/// merges with this one. It does not bound the depth: [`Twin`]'s patches are checked first.
pub fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.shift_remove(key);
            }
            Value::Object(patch_child) => {
                let entry = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(child) = entry {
                    merge(child, patch_child);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}
