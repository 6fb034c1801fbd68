//! The management API on the daemon's own Unix socket, which `outpost edge list|logs|restart` use: the module
//! list with status, module logs (tail or follow), and restarts. The socket is the owner's only (0600). Every
//! request and JSON answer is a type of [`api`], which the CLI imports too; a request naming another API version
//! is refused (400).

pub mod api;

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};

use api::{
    DesiredStatus, DiskCounters, EndpointCounters, ErrorResponse, ManagementRequest, ModuleList,
    ModuleSummary, Restarted, Stats, MANAGEMENT_VERSION_PARAM,
};

use crate::agent::{Agent, RestartModuleError};
use crate::edgehub::store::DeadLetter;
use crate::edgehub::EdgeHub;
use crate::support_bundle::{BundleOptions, BundleSources};

/// What the management API looks after.
#[derive(Clone)]
struct Daemon {
    agent: Arc<Agent>,
    edge_hub: Arc<EdgeHub>,
}

/// Serves the management API on `listener` (from [`bind`]) until the task is dropped.
pub async fn serve(
    agent: Arc<Agent>,
    edge_hub: Arc<EdgeHub>,
    listener: UnixListener,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/modules", get(list))
        .route("/modules/{module}/logs", get(logs))
        .route("/modules/{module}/restart", post(restart))
        .route("/stats", get(stats))
        .route("/support-bundle", get(support_bundle))
        .route("/daemon-logs", get(daemon_logs))
        .layer(axum::middleware::from_fn(require_version))
        .with_state(Daemon { agent, edge_hub });
    axum::serve(listener, router).await
}

/// Binds a Unix socket at `path` that only this user can connect to, with no moment where it is open to others:
/// it is bound inside a fresh `0700` directory, made `0600` there, then renamed into place. (A umask would do the
/// same, but the umask is the whole process's, and other threads create files at the same time.)
///
/// The daemon binds it first thing, before it starts modules: a socket left by a killed daemon is replaced at
/// once, and a CLI call made while the daemon is still starting waits in the backlog instead of being refused.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    // Shorter than `path`'s own name: a Unix socket path has at most 107 bytes.
    let staging = parent.join(format!(".m{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| -> std::io::Result<UnixListener> {
        let staged = staging.join("s");
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        let _ = std::fs::remove_file(path);
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = ErrorResponse {
        message: message.to_owned(),
    };
    (status, Json(body)).into_response()
}

async fn require_version(request: Request, next: Next) -> Response {
    let prefix = format!("{MANAGEMENT_VERSION_PARAM}=");
    let version = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix(prefix.as_str()));
    match api::check_version(version) {
        Ok(()) => next.run(request).await,
        Err(refused) => error(StatusCode::BAD_REQUEST, &refused.to_string()),
    }
}

/// The module list of the agent's reported properties (a document in Azure's shape, which the agent writes).
fn module_list(report: &Value) -> ModuleList {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let modules = report
        .get("modules")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, module)| ModuleSummary {
            name: name.clone(),
            status: text(module.get("runtimeStatus")),
            description: text(module.get("statusDescription")),
            image: text(
                module
                    .pointer("/settings/image")
                    .or_else(|| module.pointer("/settings/path")),
            ),
            restart_count: module.get("restartCount").and_then(Value::as_u64),
        })
        .collect();
    let last_desired_status = report.get("lastDesiredStatus").and_then(|status| {
        Some(DesiredStatus {
            code: u16::try_from(status.get("code")?.as_u64()?).ok()?,
            description: text(status.get("description")).unwrap_or_default(),
        })
    });
    ModuleList {
        modules,
        last_desired_status,
        last_desired_version: report.get("lastDesiredVersion").and_then(Value::as_u64),
    }
}

/// The deployed modules as the agent reports them: name, status, description, image.
async fn list(State(Daemon { agent, .. }): State<Daemon>) -> Response {
    agent.refresh_report().await;
    let report = agent.reported.borrow().clone();
    Json(module_list(&report)).into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(Daemon { agent, .. }): State<Daemon>,
    UrlPath(module): UrlPath<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    let lines = match agent.runtime.logs(&module, query.tail).await {
        Ok(lines) => lines,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    if !query.follow {
        return text.into_response();
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<String>(256);
    let runtime = agent.runtime.clone();
    tokio::spawn(async move {
        if let Err(error) = runtime.follow_logs(&module, sender).await {
            tracing::debug!(%error, "log follow ended");
        }
    });
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(text)) });
    let tail = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let line = receiver.recv().await?;
        Some((Ok(Bytes::from(format!("{line}\n"))), receiver))
    });
    Body::from_stream(futures_util::StreamExt::chain(head, tail)).into_response()
}

async fn restart(
    State(Daemon { agent, .. }): State<Daemon>,
    UrlPath(module): UrlPath<String>,
) -> Response {
    match agent.restart_module(&module).await {
        Ok(()) => Json(Restarted { restarted: module }).into_response(),
        Err(e @ RestartModuleError::NotDeployed(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct DaemonLogsQuery {
    tail: Option<usize>,
}

/// The daemon's own recent log lines, secrets redacted as in the support bundle.
async fn daemon_logs(Query(query): Query<DaemonLogsQuery>) -> Response {
    crate::support_bundle::daemon_log(query.tail).into_response()
}

/// The support bundle (tar.gz), as `outpost edge support-bundle` writes it.
async fn support_bundle(State(Daemon { agent, edge_hub }): State<Daemon>) -> Response {
    let sources = BundleSources { agent, edge_hub };
    match crate::support_bundle::build(&sources, &BundleOptions::default()).await {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/gzip")],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "support bundle");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

/// The edge hub's store-and-forward counters, dead letters and link state.
async fn stats(State(Daemon { edge_hub, .. }): State<Daemon>) -> Response {
    Json(stats_document(&edge_hub)).into_response()
}

/// What `outpost edge stats` prints (and the support bundle holds).
pub fn stats_document(edge_hub: &EdgeHub) -> Stats {
    let stats = edge_hub.router.log().stats();
    let disk = edge_hub.free_space.status(std::time::Instant::now());
    let endpoints = stats
        .endpoints
        .iter()
        .map(|(name, e)| {
            let counters = EndpointCounters {
                queued: e.queued,
                in_flight: e.in_flight,
                delivered: e.delivered,
                expired: e.expired,
                dropped: e.dropped,
                dead_lettered: e.dead_lettered,
            };
            (name.clone(), counters)
        })
        .collect();
    Stats {
        online: edge_hub.is_online(),
        appended: stats.appended,
        queued: stats.endpoints.values().map(|e| e.queued).sum(),
        delivered: stats.delivered,
        expired: stats.expired,
        dropped: stats.dropped,
        disk_bytes: stats.bytes_on_disk,
        // Since the store was created (the other counters count since the daemon started): each is gone for
        // good, and its reason is in the log.
        dead_lettered: edge_hub
            .store
            .dead_lettered(DeadLetter::Message)
            .unwrap_or(0),
        reported_backlog: edge_hub
            .store
            .reported_backlog()
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        reported_dead_lettered: edge_hub
            .store
            .dead_lettered(DeadLetter::ReportedPatch)
            .unwrap_or(0),
        endpoints,
        disk: DiskCounters {
            free_bytes: disk.space.map(|s| s.free_bytes),
            total_bytes: disk.space.map(|s| s.total_bytes),
            min_free_bytes: disk.min_free_bytes,
            refusing: disk.refusing,
        },
    }
}

/// A response of the management API.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as it arrives.
    pub body: hyper::body::Incoming,
}

/// Why a typed call to the management API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the exchange broke.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The daemon refused; its message.
    #[error("{0}")]
    Refused(String),
    /// The answer breaks the contract (a daemon of another release?).
    #[error("the daemon's answer breaks the management contract: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Sends `request` and reads its JSON answer as `A`.
pub async fn call<A: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &ManagementRequest<'_>,
) -> Result<A, ClientError> {
    let answer = send(socket, request).await?;
    let status = answer.status;
    let bytes = answer.bytes().await?;
    if status != 200 {
        return Err(ClientError::Refused(refusal_message(&bytes)));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// The message of a refusal's [`ErrorResponse`], or its text when it is not one.
pub fn refusal_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorResponse>(body).map_or_else(
        |_| String::from_utf8_lossy(body).into_owned(),
        |e| e.message,
    )
}

/// Sends `request` to the management socket; the answer arrives as it comes (logs, the support bundle).
pub async fn send(socket: &Path, request: &ManagementRequest<'_>) -> std::io::Result<Answer> {
    self::request(socket, request.method(), &request.path()).await
}

/// Sends one request to the management socket.
async fn request(socket: &Path, method: &str, path: &str) -> std::io::Result<Answer> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot reach the edge daemon at {}: {e} (is `outpost edge run` running?)",
                socket.display()
            ),
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(std::io::Error::other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    Ok(Answer {
        status: response.status().as_u16(),
        body: response.into_body(),
    })
}

impl Answer {
    /// The whole body.
    pub async fn bytes(self) -> std::io::Result<Bytes> {
        Ok(self
            .body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes())
    }

    /// The whole body as text.
    pub async fn text(self) -> std::io::Result<String> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }

    /// The next chunk of the body, for following logs.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(data);
                    }
                }
                Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_module_list_reads_the_agents_report_and_sends_null_for_what_it_lacks() {
        let report = json!({
            "lastDesiredVersion": 4,
            "lastDesiredStatus": {"code": 200, "description": ""},
            "modules": {
                "filter": {"runtimeStatus": "running", "statusDescription": "up",
                           "settings": {"path": "/bin/filter"}, "restartCount": 1},
                "new": {},
            },
        });
        let list = serde_json::to_value(module_list(&report)).unwrap();
        assert_eq!(
            list,
            json!({
                "modules": [
                    {"name": "filter", "status": "running", "description": "up", "image": "/bin/filter",
                     "restartCount": 1},
                    {"name": "new", "status": null, "description": null, "image": null, "restartCount": null},
                ],
                "lastDesiredStatus": {"code": 200, "description": ""},
                "lastDesiredVersion": 4,
            })
        );
        let empty = serde_json::to_value(module_list(&json!({}))).unwrap();
        assert_eq!(
            empty,
            json!({"modules": [], "lastDesiredStatus": null, "lastDesiredVersion": null})
        );
    }

    #[tokio::test]
    async fn the_socket_replaces_one_a_killed_daemon_left_and_is_its_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("management.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(
            UnixStream::connect(&path).await.is_err(),
            "a stale socket refuses"
        );
        let listener = bind(&path).unwrap();
        let connecting = UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), connecting);
        assert!(accepted.is_ok() && connected.is_ok());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_refusal_message_is_read_from_the_error_body_or_taken_as_text() {
        assert_eq!(
            refusal_message(br#"{"message":"no such module"}"#),
            "no such module"
        );
        assert_eq!(refusal_message(b"plain"), "plain");
    }
}
