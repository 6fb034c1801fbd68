//! What Docker holds on disk for an edge device, for `outpost edge check`: the images (all of them, and those
//! Outpost pulled for modules) and the json-file logs of the device's containers.

use std::collections::HashMap;
use std::path::Path;

use bollard::container::{InspectContainerOptions, ListContainersOptions};
use bollard::Docker;

use super::{status_code, LABEL_DEVICE, LABEL_MODULE};

/// Docker's disk use as it concerns one edge device.
#[derive(Debug)]
pub struct DockerDiskUsage {
    /// How many images the Docker daemon holds.
    pub image_count: usize,
    /// The bytes of their layers (shared layers counted once).
    pub image_bytes: u64,
    /// The images Outpost pulled for modules, with their size (`None`: not on the device any more).
    pub pulled: Vec<(String, Option<u64>)>,
    /// Each module container's log: its bytes (rotated files included), or why they could not be read (Docker
    /// keeps them under its own directory, usually readable by root only).
    pub container_logs: Vec<(String, Result<u64, LogSizeError>)>,
}

/// Asks the Docker daemon at `socket` about images and the logs of `device_id`'s containers; `pulled` are the
/// image references Outpost pulled.
pub async fn disk_usage(
    socket: &Path,
    device_id: &str,
    pulled: &[String],
) -> Result<DockerDiskUsage, DiskUsageError> {
    let path = socket
        .to_str()
        .ok_or_else(|| DiskUsageError::SocketPath(socket.to_owned()))?;
    let docker = Docker::connect_with_unix(path, 30, bollard::API_DEFAULT_VERSION)?;
    let df = docker.df().await?;
    let mut usage = DockerDiskUsage {
        image_count: df.images.as_ref().map_or(0, Vec::len),
        image_bytes: u64::try_from(df.layers_size.unwrap_or(0)).unwrap_or(0),
        pulled: Vec::new(),
        container_logs: Vec::new(),
    };
    for reference in pulled {
        let size = match docker.inspect_image(reference).await {
            Ok(image) => image.size.and_then(|s| u64::try_from(s).ok()),
            Err(e) if status_code(&e) == Some(404) => None,
            Err(e) => return Err(e.into()),
        };
        usage.pulled.push((reference.clone(), size));
    }
    let options = ListContainersOptions {
        all: true,
        filters: HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_DEVICE}={device_id}")],
        )]),
        ..Default::default()
    };
    let containers = docker.list_containers(Some(options)).await?;
    for id in containers.iter().filter_map(|c| c.id.as_deref()) {
        let Ok(inspect) = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        else {
            continue;
        };
        let module = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_MODULE))
            .cloned()
            .unwrap_or_else(|| id.to_owned());
        let bytes = match inspect.log_path.as_deref().filter(|p| !p.is_empty()) {
            None => Err(LogSizeError::NotJsonFile),
            Some(log) => log_bytes(Path::new(log)),
        };
        usage.container_logs.push((module, bytes));
    }
    usage.container_logs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(usage)
}

/// Why the Docker daemon's disk use cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DiskUsageError {
    /// The socket's path is not UTF-8 (the Docker client takes a string).
    #[error("{}: not UTF-8", .0.display())]
    SocketPath(std::path::PathBuf),
    /// The Docker daemon did not answer.
    #[error(transparent)]
    Docker(#[from] bollard::errors::Error),
}

/// Why a container's log size is unknown.
#[derive(Debug, thiserror::Error)]
pub enum LogSizeError {
    /// It does not log to a file (not the json-file driver).
    #[error("no log file (not the json-file driver)")]
    NotJsonFile,
    /// Its log file cannot be read.
    #[error("{}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The bytes of a json-file log and its rotated files (`x-json.log.1`, ...).
fn log_bytes(log: &Path) -> Result<u64, LogSizeError> {
    let mut total = std::fs::metadata(log)
        .map_err(|source| LogSizeError::Unreadable {
            path: log.to_owned(),
            source,
        })?
        .len();
    for n in 1.. {
        match std::fs::metadata(format!("{}.{n}", log.display())) {
            Ok(meta) => total += meta.len(),
            Err(_) => break,
        }
    }
    Ok(total)
}
