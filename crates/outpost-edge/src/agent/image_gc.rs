//! Image garbage collection: images Outpost pulled for modules that no deployed module has used for a while are
//! removed, on a schedule, without touching any module instance.
//!
//! The [`ImageLedger`] (pure, kept in `agent/images.json`) records which images the agent pulled (an image that
//! was on the device before Outpost needed it is the operator's and is never a candidate) and when a deployed
//! module last used each. An image is in use while the deployment in force has a module on it, while the
//! deployment being applied has one (registered by [`ImageGc::deploying`] before the agent acts on it), or
//! while any instance runs it; a removal is never forced, so Docker itself refuses to remove an image that any
//! container uses. Azure IoT Edge's first image GC restarted every module; this one only ever removes images.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outpost_core::EdgeAgentDesired;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::Agent;
use crate::config::DiskConfig;
use crate::identities::write_durably;
use crate::runtime::{ImageRemoval, ModuleRuntime};

/// The ledger's file in the agent's directory.
pub const LEDGER_FILE: &str = "images.json";

/// The images Outpost pulled for modules, and when a deployed module last used each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageLedger {
    /// By image reference, as the deployment names it.
    pub images: BTreeMap<String, PulledImage>,
}

/// One image Outpost pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PulledImage {
    /// When the agent pulled it (the first time).
    pub pulled_at: DateTime<Utc>,
    /// The last time a deployed module was seen using it.
    pub last_used: DateTime<Utc>,
}

impl ImageLedger {
    /// Records that the agent brought `reference` onto the device; returns whether the ledger changed.
    pub fn pulled(&mut self, reference: &str, now: DateTime<Utc>) -> bool {
        if let Some(image) = self.images.get_mut(reference) {
            image.last_used = now;
        } else {
            self.images.insert(
                reference.to_owned(),
                PulledImage {
                    pulled_at: now,
                    last_used: now,
                },
            );
        }
        true
    }

    /// Marks the recorded images among `in_use` as used at `now`; returns whether the ledger changed.
    pub fn used(&mut self, in_use: &BTreeSet<String>, now: DateTime<Utc>) -> bool {
        let mut changed = false;
        for reference in in_use {
            if let Some(image) = self.images.get_mut(reference) {
                image.last_used = now;
                changed = true;
            }
        }
        changed
    }

    /// The recorded images not in `in_use` that no module has used for `unused_for`, oldest use first.
    pub fn due(
        &self,
        in_use: &BTreeSet<String>,
        now: DateTime<Utc>,
        unused_for: chrono::Duration,
    ) -> Vec<String> {
        let mut due: Vec<(&DateTime<Utc>, &String)> = self
            .images
            .iter()
            .filter(|(reference, image)| {
                !in_use.contains(*reference) && now - image.last_used >= unused_for
            })
            .map(|(reference, image)| (&image.last_used, reference))
            .collect();
        due.sort();
        due.into_iter().map(|(_, r)| r.clone()).collect()
    }

    /// Forgets an image that is gone.
    pub fn forget(&mut self, reference: &str) -> bool {
        self.images.remove(reference).is_some()
    }
}

/// The container images a deployment's modules use.
pub fn images_of(deployment: &EdgeAgentDesired) -> BTreeSet<String> {
    deployment
        .modules
        .values()
        .filter(|m| m.kind != "process" && !m.image.is_empty())
        .map(|m| m.image.clone())
        .collect()
}

/// The ledger on disk, what the deployment being applied uses, and the schedule.
pub struct ImageGc {
    path: PathBuf,
    unused_for: chrono::Duration,
    every: Duration,
    /// A tokio `Mutex`, held across the removals of a pass: a deployment registered with [`Self::deploying`]
    /// waits for the pass, so no image it needs is removed after it was registered.
    state: Mutex<GcState>,
}

struct GcState {
    ledger: ImageLedger,
    /// The images of the deployment last handed to the agent (being applied, or in force).
    deploying: BTreeSet<String>,
}

impl ImageGc {
    /// The ledger in `agent_dir` (empty when there is none yet), with the schedule of `settings`.
    pub fn open(agent_dir: &Path, settings: &DiskConfig) -> std::io::Result<Self> {
        let path = agent_dir.join(LEDGER_FILE);
        let ledger = read_ledger(&path)?;
        Ok(Self {
            path,
            unused_for: chrono::Duration::seconds(
                i64::try_from(settings.image_gc_unused_secs).unwrap_or(i64::MAX / 1000),
            ),
            every: Duration::from_secs(settings.image_gc_interval_secs),
            state: Mutex::new(GcState {
                ledger,
                deploying: BTreeSet::new(),
            }),
        })
    }

    /// Registers the images of a deployment about to be applied: none of them is removed from now on, until the
    /// next deployment replaces them (by then, the deployment in force protects them).
    pub async fn deploying(&self, images: BTreeSet<String>) {
        let mut state = self.state.lock().await;
        let now = Utc::now();
        if state.ledger.used(&images, now) {
            self.save(&state.ledger);
        }
        state.deploying = images;
    }

    /// Records that the agent pulled `reference` onto the device.
    pub async fn pulled(&self, reference: &str) {
        let mut state = self.state.lock().await;
        if state.ledger.pulled(reference, Utc::now()) {
            self.save(&state.ledger);
        }
    }

    /// One pass: marks the images in use (`in_force` and the deployment being applied, and every instance's
    /// image) as used now, and removes the recorded images unused for long enough. Returns those removed.
    pub async fn collect(
        &self,
        runtime: &dyn ModuleRuntime,
        mut in_use: BTreeSet<String>,
    ) -> Vec<String> {
        match runtime.list().await {
            Ok(instances) => in_use.extend(instances.into_iter().map(|i| i.image)),
            Err(error) => {
                // Without knowing what runs, nothing is safe to remove.
                tracing::warn!(%error, "image garbage collection skipped: cannot list module instances");
                return Vec::new();
            }
        }
        let mut state = self.state.lock().await;
        in_use.extend(state.deploying.iter().cloned());
        let now = Utc::now();
        let mut changed = state.ledger.used(&in_use, now);
        let mut removed = Vec::new();
        for reference in state.ledger.due(&in_use, now, self.unused_for) {
            match runtime.remove_image(&reference).await {
                Ok(ImageRemoval::Removed) => {
                    tracing::info!(image = %reference, unused_secs = self.unused_for.num_seconds(),
                        "removed an image no deployed module has used");
                    changed |= state.ledger.forget(&reference);
                    removed.push(reference);
                }
                Ok(ImageRemoval::Missing) => {
                    tracing::info!(image = %reference, "an image Outpost pulled is gone already");
                    changed |= state.ledger.forget(&reference);
                }
                Ok(ImageRemoval::InUse) => {
                    tracing::debug!(image = %reference, "an unused image is kept: a container outside the deployment uses it");
                }
                Err(error) => tracing::warn!(%error, "cannot remove an unused image"),
            }
        }
        if changed {
            self.save(&state.ledger);
        }
        removed
    }

    /// How often [`run`] makes a pass.
    pub fn every(&self) -> Duration {
        self.every
    }

    fn save(&self, ledger: &ImageLedger) {
        let result = serde_json::to_vec_pretty(ledger)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_durably(&self.path, &bytes));
        if let Err(error) = result {
            tracing::warn!(path = %self.path.display(), %error, "cannot save the image ledger");
        }
    }
}

/// Reads the ledger at `path` (the image references Outpost pulled; empty when there is none yet).
pub fn read_ledger(path: &Path) -> std::io::Result<ImageLedger> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ImageLedger::default()),
        Err(e) => Err(e),
    }
}

/// Collects unused images at start and then every [`ImageGc::every`], until the task is aborted.
pub async fn run(agent: Arc<Agent>) {
    loop {
        let in_force = agent
            .state
            .lock()
            .await
            .deployment
            .as_ref()
            .map(images_of)
            .unwrap_or_default();
        agent.images.collect(agent.runtime.as_ref(), in_force).await;
        tokio::time::sleep(agent.images.every()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    const DAY: i64 = 86_400;

    #[test]
    fn only_pulled_images_unused_for_long_enough_are_due() {
        let mut ledger = ImageLedger::default();
        ledger.pulled("x:1", at(0));
        ledger.pulled("y:1", at(0));
        let week = chrono::Duration::days(7);
        // "operator:1" was never pulled by the agent: never due, whatever uses it.
        assert!(ledger.due(&set(&[]), at(7 * DAY - 1), week).is_empty());
        assert_eq!(
            ledger.due(&set(&["y:1"]), at(7 * DAY), week),
            ["x:1".to_owned()]
        );
    }

    #[test]
    fn an_image_in_use_is_never_due_and_its_use_restarts_the_clock() {
        let mut ledger = ImageLedger::default();
        ledger.pulled("x:1", at(0));
        let week = chrono::Duration::days(7);
        assert!(ledger.due(&set(&["x:1"]), at(30 * DAY), week).is_empty());
        assert!(ledger.used(&set(&["x:1", "unknown:1"]), at(30 * DAY)));
        assert!(ledger.due(&set(&[]), at(36 * DAY), week).is_empty());
        assert_eq!(
            ledger.due(&set(&[]), at(37 * DAY), week),
            ["x:1".to_owned()]
        );
    }

    #[test]
    fn due_images_come_oldest_use_first_and_forgotten_ones_leave() {
        let mut ledger = ImageLedger::default();
        ledger.pulled("b:1", at(0));
        ledger.pulled("a:1", at(10));
        let due = ledger.due(&set(&[]), at(100), chrono::Duration::seconds(5));
        assert_eq!(due, ["b:1".to_owned(), "a:1".to_owned()]);
        assert!(ledger.forget("b:1"));
        assert!(!ledger.forget("b:1"));
        assert_eq!(ledger.images.len(), 1);
    }

    #[test]
    fn a_pull_again_keeps_the_first_pull_time() {
        let mut ledger = ImageLedger::default();
        ledger.pulled("x:1", at(0));
        ledger.pulled("x:1", at(50));
        assert_eq!(ledger.images["x:1"].pulled_at, at(0));
        assert_eq!(ledger.images["x:1"].last_used, at(50));
    }

    #[test]
    fn the_ledger_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let settings = DiskConfig::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let gc = ImageGc::open(dir.path(), &settings).unwrap();
            gc.pulled("x:1").await;
        });
        let ledger = read_ledger(&dir.path().join(LEDGER_FILE)).unwrap();
        assert!(ledger.images.contains_key("x:1"));
        assert!(read_ledger(&dir.path().join("none.json"))
            .unwrap()
            .images
            .is_empty());
    }
}
