//! What the process runtime keeps on disk for each instance, in `state_dir/{name}`: the spec (`spec.json`), how
//! its last run went (`status.json`) and, while it runs, its pid (`pid`). With them a restarted daemon finds its
//! instances again.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::runtime::InstanceSpec;

/// The spec's file.
pub(super) const SPEC_FILE: &str = "spec.json";
/// The last run's file.
pub(super) const STATUS_FILE: &str = "status.json";
/// The pid's file, present while the instance runs.
pub(super) const PID_FILE: &str = "pid";

/// The spec as persisted in `spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredSpec {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) executable: Option<PathBuf>,
    pub(super) args: Vec<String>,
    pub(super) create_options: Option<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) workload_socket: PathBuf,
    pub(super) gateway_hostname: String,
    pub(super) digest: String,
}

impl From<&InstanceSpec> for StoredSpec {
    fn from(s: &InstanceSpec) -> Self {
        Self {
            name: s.name.clone(),
            image: s.image.clone(),
            executable: s.executable.clone(),
            args: s.args.clone(),
            create_options: s.create_options.clone(),
            env: s.env.clone(),
            workload_socket: s.workload_socket.clone(),
            gateway_hostname: s.gateway_hostname.clone(),
            digest: s.digest.clone(),
        }
    }
}

/// How the last run went, as persisted in `status.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct RunRecord {
    pub(super) started_at: Option<DateTime<Utc>>,
    pub(super) exited_at: Option<DateTime<Utc>>,
    pub(super) exit_code: Option<i64>,
}

/// What `dir` holds: the spec, the last run, and the pid of a run that had not ended when the file was last
/// written. `None` when `dir` is not an instance directory (no `spec.json`) or its spec is unreadable.
pub(super) fn load(dir: &Path) -> Option<(StoredSpec, RunRecord, Option<u32>)> {
    let spec = match serde_json::from_slice(&fs::read(dir.join(SPEC_FILE)).ok()?) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "ignoring a process instance with an unreadable spec");
            return None;
        }
    };
    let record = fs::read(dir.join(STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let pid = fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Some((spec, record, pid))
}

/// Writes JSON with the edge's one atomic write (temporary file, fsync, rename, directory fsync), so a crash
/// never leaves half a file; `0600`, since a spec holds the module's environment.
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    crate::identities::write_durably(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_directory_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoredSpec {
            name: "m".into(),
            image: String::new(),
            executable: Some("/bin/true".into()),
            args: vec!["-x".into()],
            create_options: None,
            env: BTreeMap::from([("K".into(), "V".into())]),
            workload_socket: PathBuf::from("/s.sock"),
            gateway_hostname: "gw".into(),
            digest: "d".into(),
        };
        write_json(&dir.path().join(SPEC_FILE), &spec).unwrap();
        fs::write(dir.path().join(PID_FILE), "42\n").unwrap();
        let (read, record, pid) = load(dir.path()).unwrap();
        assert_eq!(
            (
                read.name.as_str(),
                read.env["K"].as_str(),
                read.args[0].as_str()
            ),
            ("m", "V", "-x")
        );
        assert_eq!((record.exit_code, pid), (None, Some(42)));
        // Written with the one atomic write: its owner's only, and no temporary left behind.
        let mode = fs::metadata(dir.path().join(SPEC_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_directory_without_a_readable_spec_is_not_an_instance() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none());
        fs::write(dir.path().join(SPEC_FILE), "{").unwrap();
        assert!(load(dir.path()).is_none());
    }
}
