//! The hub's identity kept in its database, so that replicas on one PostgreSQL database are one hub to devices.
//!
//! The CA (its files: `ca.pem`, `ca.key`, `ca-cross.pem`) and the listeners' server certificate for the public
//! host name are settings of the database ([`crate::storage::Tables::setting`]). The first replica to start
//! stores its own (`put_setting` with `only_if_absent`: of replicas starting together exactly one wins); every
//! other replica writes the stored ones into its data directory before opening the CA from there, so `ca.pem`
//! in each replica's data directory is the same file and each presents a certificate of the same CA.
//!
//! Renewal: the server certificate is renewed by each replica on its own (any certificate of the shared CA will
//! do); the shared CA is not renewed by replicas (see `CertificateRenewal::with_shared_ca`), since each would
//! make a different one. docs/operations.md says how to replace it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::storage::{transaction, Engine};
use crate::store::StorageError;

/// The setting holding the CA's files.
pub const CA_SETTING: &str = "hub.ca";

/// The setting holding the server certificate for `host_name`.
pub fn server_setting(host_name: &str) -> String {
    format!("hub.server-certificate/{host_name}")
}

/// The CA's files as stored in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCa {
    /// `ca.pem`: the trust bundle.
    pub bundle: String,
    /// `ca.key`: the current CA's key.
    pub key: String,
    /// `ca-cross.pem`, when the CA was renewed and the old one is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross: Option<String>,
}

/// A server certificate as stored in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredServerCertificate {
    /// The leaf and what leads to the CA, PEM.
    pub chain: String,
    /// The leaf's key, PEM.
    pub key: String,
}

/// What could go wrong sharing the identity.
#[derive(Debug, thiserror::Error)]
pub enum SharedIdentityError {
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file of the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

fn io(path: &Path, source: std::io::Error) -> SharedIdentityError {
    SharedIdentityError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the CA files of `data_dir` (`None` when it has no CA yet).
fn read_ca(data_dir: &Path) -> Result<Option<StoredCa>, SharedIdentityError> {
    let read = |name: &str| {
        let path = data_dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io(&path, error)),
        }
    };
    let (Some(bundle), Some(key)) = (read("ca.pem")?, read("ca.key")?) else {
        return Ok(None);
    };
    Ok(Some(StoredCa {
        bundle,
        key,
        cross: read("ca-cross.pem")?,
    }))
}

/// Writes `ca` into `data_dir` as the CA's files (the key `0600`), replacing what is there.
fn write_ca(data_dir: &Path, ca: &StoredCa) -> Result<(), SharedIdentityError> {
    outpost_store::host::private_dir(data_dir).map_err(|e| io(data_dir, e))?;
    let write = |name: &str, text: &str, mode: u32| {
        let path = data_dir.join(name);
        outpost_store::host::write_atomically(&path, text.as_bytes(), mode)
            .map_err(|e| io(&path, e))
    };
    // A renewal this replica had begun is someone else's CA now: forget it before the key is replaced.
    let pending = data_dir.join("ca.key.new");
    match std::fs::remove_file(&pending) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(&pending, error))
        }
        _ => {}
    }
    write("ca.key", &ca.key, 0o600)?;
    write("ca.pem", &ca.bundle, 0o644)?;
    let cross = data_dir.join("ca-cross.pem");
    match &ca.cross {
        Some(text) => write("ca-cross.pem", text, 0o644)?,
        None => match std::fs::remove_file(&cross) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&cross, error))
            }
            _ => {}
        },
    }
    Ok(())
}

/// Makes `data_dir` hold the hub's shared CA before it is opened: the stored one, written into it; or, when
/// none is stored yet, the one `create` makes there (or finds there), stored for the other replicas unless
/// one of them stored its own first (then that one is written into `data_dir` and `create` runs again to
/// load it). Returns whether this replica's CA became the hub's.
pub fn share_ca<T, E>(
    engine: &dyn Engine,
    data_dir: &Path,
    mut open: impl FnMut() -> Result<T, E>,
) -> Result<(T, bool), E>
where
    E: From<SharedIdentityError>,
{
    if let Some(theirs) = stored::<StoredCa>(engine, CA_SETTING).map_err(E::from)? {
        if read_ca(data_dir).map_err(E::from)?.as_ref() != Some(&theirs) {
            write_ca(data_dir, &theirs).map_err(E::from)?;
        }
        return Ok((open()?, false));
    }
    let opened = open()?;
    let ours = read_ca(data_dir)
        .map_err(E::from)?
        .ok_or_else(|| {
            io(
                &data_dir.join("ca.pem"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "the CA was not written"),
            )
        })
        .map_err(E::from)?;
    if store_if_absent(engine, CA_SETTING, &ours).map_err(E::from)? {
        return Ok((opened, true));
    }
    // Another replica stored its CA between our read and our insert: use that one.
    drop(opened);
    let theirs = stored::<StoredCa>(engine, CA_SETTING)
        .map_err(E::from)?
        .ok_or_else(|| StorageError::Engine("the stored CA vanished".into()))
        .map_err(SharedIdentityError::from)
        .map_err(E::from)?;
    write_ca(data_dir, &theirs).map_err(E::from)?;
    Ok((open()?, false))
}

/// The server certificate for `host_name` stored in the database, if any.
pub fn stored_server_certificate(
    engine: &dyn Engine,
    host_name: &str,
) -> Result<Option<StoredServerCertificate>, SharedIdentityError> {
    stored(engine, &server_setting(host_name))
}

/// Stores a server certificate for `host_name`, replacing a stored one only when `replace`; whether it was stored.
pub fn store_server_certificate(
    engine: &dyn Engine,
    host_name: &str,
    certificate: &StoredServerCertificate,
    replace: bool,
) -> Result<bool, SharedIdentityError> {
    let bytes = serde_json::to_vec(certificate).map_err(StorageError::from)?;
    let name = server_setting(host_name);
    Ok(transaction(engine, |tables| {
        tables.put_setting(&name, &bytes, !replace)
    })?)
}

fn stored<T: serde::de::DeserializeOwned>(
    engine: &dyn Engine,
    name: &str,
) -> Result<Option<T>, SharedIdentityError> {
    let bytes = transaction(engine, |tables| tables.setting(name))?;
    bytes
        .map(|bytes| serde_json::from_slice(&bytes).map_err(StorageError::from))
        .transpose()
        .map_err(SharedIdentityError::from)
}

fn store_if_absent<T: Serialize>(
    engine: &dyn Engine,
    name: &str,
    value: &T,
) -> Result<bool, SharedIdentityError> {
    let bytes = serde_json::to_vec(value).map_err(StorageError::from)?;
    Ok(transaction(engine, |tables| {
        tables.put_setting(name, &bytes, true)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteEngine;

    fn open_ca(dir: &Path) -> Result<outpost_pki::CertificateAuthority, anyhow::Error> {
        Ok(outpost_pki::CertificateAuthority::load_or_create(
            dir,
            "Outpost hub CA",
        )?)
    }

    #[test]
    fn the_second_data_directory_gets_the_first_ones_ca() {
        let engine = SqliteEngine::in_memory().unwrap();
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, created) = share_ca(&engine, first.path(), || open_ca(first.path())).unwrap();
        assert!(created);
        let (b, created) = share_ca(&engine, second.path(), || open_ca(second.path())).unwrap();
        assert!(!created);
        assert_eq!(a.pem(), b.pem());
        assert_eq!(
            std::fs::read(first.path().join("ca.key")).unwrap(),
            std::fs::read(second.path().join("ca.key")).unwrap()
        );
    }
}
