//! The module identities this edge device owns, cached on disk so that modules can sign tokens (and the edge
//! hub can authenticate them) while the hub is unreachable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What the edge keeps of a module identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleCredentials {
    /// The module's name.
    pub module_id: String,
    /// The identity's generation id (`IOTEDGE_MODULEGENERATIONID`).
    pub generation_id: String,
    /// Its base64 primary key.
    pub primary_key: String,
    /// Its base64 secondary key.
    pub secondary_key: String,
}

/// The cache, persisted to one JSON file (written to a temporary file, fsync'd, then renamed over the old one).
pub struct IdentityCache {
    path: PathBuf,
    /// A std `Mutex`: held for a lookup or an insert, never across an `.await`.
    entries: Mutex<BTreeMap<String, ModuleCredentials>>,
}

impl IdentityCache {
    /// Opens the cache at `path`, empty when the file does not exist. The file holds module keys: one left
    /// readable by others by an older version is tightened to `0600`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        outpost_store::host::private_file(path)?;
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_owned(),
            entries: Mutex::new(entries),
        })
    }

    /// The credentials of a module, if known.
    pub fn get(&self, module: &str) -> Option<ModuleCredentials> {
        self.lock().get(module).cloned()
    }

    /// Every known module identity.
    pub fn all(&self) -> Vec<ModuleCredentials> {
        self.lock().values().cloned().collect()
    }

    /// Stores or replaces a module's credentials durably.
    pub fn put(&self, credentials: ModuleCredentials) -> std::io::Result<()> {
        let mut entries = self.lock();
        entries.insert(credentials.module_id.clone(), credentials);
        write_durably(
            &self.path,
            &serde_json::to_vec_pretty(&*entries).map_err(std::io::Error::other)?,
        )
    }

    /// Forgets a module durably.
    pub fn remove(&self, module: &str) -> std::io::Result<()> {
        let mut entries = self.lock();
        if entries.remove(module).is_some() {
            write_durably(
                &self.path,
                &serde_json::to_vec_pretty(&*entries).map_err(std::io::Error::other)?,
            )?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ModuleCredentials>> {
        crate::lock(&self.entries)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content, never a mix.
///
/// The file is written `0600`: what the edge writes this way (module keys, the deployment with its registry
/// credentials) is its user's only.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    outpost_store::host::write_atomically(path, bytes, outpost_store::host::PRIVATE_FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(name: &str) -> ModuleCredentials {
        ModuleCredentials {
            module_id: name.into(),
            generation_id: "1".into(),
            primary_key: "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=".into(),
            secondary_key: String::new(),
        }
    }

    #[test]
    fn identities_survive_reopening_and_removal_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        let cache = IdentityCache::open(&path).unwrap();
        cache.put(credentials("a")).unwrap();
        cache.put(credentials("b")).unwrap();
        cache.remove("a").unwrap();
        let reopened = IdentityCache::open(&path).unwrap();
        assert_eq!(reopened.all(), vec![credentials("b")]);
    }
}
