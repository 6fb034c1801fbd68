//! The last-known-good deployment: the `$edgeAgent` desired properties last accepted, kept on disk so that a
//! device that boots without its hub runs the same modules at once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::identities::write_durably;

/// An accepted deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedDeployment {
    /// The `$edgeAgent` desired properties as received (without `$version`/`$metadata`).
    pub desired: Value,
    /// The desired `$version` it came with.
    pub version: u64,
}

/// Where the last-known-good deployment is kept.
pub struct LastKnownGood {
    path: PathBuf,
}

impl LastKnownGood {
    /// The store at `dir/deployment.json`.
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("deployment.json"),
        }
    }

    /// The last accepted deployment, if any.
    pub fn load(&self) -> std::io::Result<Option<AcceptedDeployment>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Persists an accepted deployment before anything acts on it.
    pub fn save(&self, deployment: &AcceptedDeployment) -> std::io::Result<()> {
        write_durably(
            &self.path,
            &serde_json::to_vec_pretty(deployment).map_err(std::io::Error::other)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_deployment_loads_back_and_none_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = LastKnownGood::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let deployment = AcceptedDeployment {
            desired: serde_json::json!({"schemaVersion": "1.1"}),
            version: 7,
        };
        store.save(&deployment).unwrap();
        assert_eq!(
            LastKnownGood::new(dir.path()).load().unwrap(),
            Some(deployment)
        );
    }
}
