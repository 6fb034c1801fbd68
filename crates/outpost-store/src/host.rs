//! What Outpost asks of the host it runs on: enough file descriptors, and files that only its own user can read.
//!
//! The hub and the edge both keep keys and tokens on disk (the CA key, the identity registry, the edge's module
//! credentials), so their data directories are `0700` and those files `0600`; an installation made before that
//! rule is tightened at start. This sits in `outpost-store` because both daemons depend on it and it already
//! speaks to the operating system about files (flock, fsync).

use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The mode of a directory that holds secrets: its owner's only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// The mode of a file that holds secrets: its owner may read and write it, nobody else anything.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) readable by its owner only, or tightens it to `0700` when it exists.
/// Parents that already exist are left as they are.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    // An existing directory keeps its mode through `create`; a new one got 0700 less the umask's bits.
    restrict(dir, PRIVATE_DIR_MODE)
}

/// Tightens `file` to `0600` when it exists (a missing file is not an error: it will be created `0600`).
pub fn private_file(file: &Path) -> io::Result<()> {
    match restrict(file, PRIVATE_FILE_MODE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        std::fs::set_permissions(path, Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content, never a mix: the bytes
/// go to `{path}.tmp` created with `mode`, are fsync'd, renamed over `path`, and the directory is fsync'd.
///
/// A temporary left by a crash is removed first rather than reused, since it may have a wider mode.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = dir.join(name);
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Raises the soft limit on open files to the hard limit and returns the figure now in force.
///
/// Every MQTT and HTTPS connection holds a descriptor; the common default soft limit (1,024) would cap a hub at
/// about a thousand clients, while the hard limit (often 524,288 under systemd) is the operator's real intent.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current.is_some() && current == maximum {
        return Ok(current.unwrap_or(u64::MAX));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: maximum,
            maximum,
        },
    )?;
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_private_dir_and_an_existing_open_one_are_0700() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, Permissions::from_mode(0o755)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
    }

    #[test]
    fn an_existing_readable_file_is_tightened_and_a_missing_one_is_no_error() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("secret");
        std::fs::write(&file, b"key").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        private_file(&root.path().join("missing")).unwrap();
    }

    #[test]
    fn an_atomic_write_replaces_the_file_with_the_mode_asked_for() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("ca.key");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        write_atomically(&file, b"new", PRIVATE_FILE_MODE).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert_eq!(mode(&file), 0o600);
        assert!(!root.path().join("ca.key.tmp").exists());
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let raised = raise_open_files_limit().unwrap();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
        assert_eq!(Some(raised), limit.current.or(Some(u64::MAX)));
    }
}
