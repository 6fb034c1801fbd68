//! The workload API (AZURE-COMPAT §6.2): each module gets its own Unix socket, mounted into its container at
//! `/var/run/iotedge/workload.sock`, through which the Azure SDK asks for the trust bundle and for signatures
//! made with the module's key (the key never leaves the edge daemon). A caller is authorised by its peer PID:
//! it must be one of the module's processes, or it gets 403. Every body is a type of
//! [`outpost_core::workload_api`], the contract `outpost_sdk::WorkloadClient` imports too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::connect_info::{self, ConnectInfo};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outpost_core::workload_api::{
    ApiVersion, ErrorResponse, PrivateKey, PrivateKeyKind, ServerCertificateRequest,
    ServerCertificateResponse, SignRequest, SignResponse, TrustBundleResponse,
};
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::identities::IdentityCache;
use crate::runtime::ModuleRuntime;

/// Where a container finds its workload socket.
pub const CONTAINER_SOCKET: &str = "/var/run/iotedge/workload.sock";

/// The PID (and uid) of the process at the other end of a Unix socket connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerCredentials {
    /// Its PID in this daemon's PID namespace, if the kernel told.
    pub pid: Option<u32>,
}

impl connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>> for PeerCredentials {
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        let pid = stream
            .io()
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
            .and_then(|pid| u32::try_from(pid).ok());
        Self { pid }
    }
}

/// What the workload API needs from the edge daemon.
pub struct WorkloadService {
    /// Module keys.
    pub identities: Arc<IdentityCache>,
    /// Who runs the modules (to list their PIDs).
    pub runtime: Arc<dyn ModuleRuntime>,
    /// The edge device's CA: it issues module server certificates, and its bundle (the current CA and the ones
    /// it replaced that are still valid) is the trust bundle, read at each request so that a renewal shows.
    pub ca: Arc<outpost_pki::CertificateAuthority>,
    /// How long a module server certificate is valid (`[certificates] workload_cert_lifetime`).
    pub certificate_lifetime: std::time::Duration,
}

/// The per-module sockets being served.
pub struct WorkloadSockets {
    service: Arc<WorkloadService>,
    dir: PathBuf,
    /// A std `Mutex`: held to insert or remove a task handle, never across an `.await`.
    servers: Mutex<BTreeMap<String, JoinHandle<()>>>,
}

impl WorkloadSockets {
    /// Serves sockets for modules under `dir` (`{dir}/{module}.sock`).
    pub fn new(service: Arc<WorkloadService>, dir: &Path) -> Self {
        Self {
            service,
            dir: dir.to_owned(),
            servers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The host path of a module's socket.
    pub fn socket_path(&self, module: &str) -> PathBuf {
        self.dir
            .join(format!("{}.sock", module.trim_start_matches('$')))
    }

    /// Makes sure the module's socket is served; returns its host path.
    pub fn ensure(&self, module: &str) -> std::io::Result<PathBuf> {
        let path = self.socket_path(module);
        let mut servers = self
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if servers.get(module).is_some_and(|task| !task.is_finished()) && path.exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir)?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        // 0666 as aziot-edged does: a container's user may be anyone; the PID check authorises callers.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        let router = router(self.service.clone(), module.to_owned());
        let task = tokio::spawn(async move {
            let app = router.into_make_service_with_connect_info::<PeerCredentials>();
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "a workload socket stopped");
            }
        });
        if let Some(old) = servers.insert(module.to_owned(), task) {
            old.abort();
        }
        Ok(path)
    }

    /// Stops serving a module's socket and removes it.
    pub fn remove(&self, module: &str) {
        if let Some(task) = self
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(module)
        {
            task.abort();
        }
        let _ = std::fs::remove_file(self.socket_path(module));
    }
}

/// The state of one module's socket.
#[derive(Clone)]
struct Socket {
    service: Arc<WorkloadService>,
    /// The module this socket belongs to.
    module: String,
}

fn router(service: Arc<WorkloadService>, module: String) -> Router {
    Router::new()
        .route("/trust-bundle", get(trust_bundle))
        .route("/manifest-trust-bundle", get(manifest_trust_bundle))
        .route("/modules/{module}/genid/{genid}/sign", post(sign))
        .route(
            "/modules/{module}/genid/{genid}/certificate/server",
            post(server_certificate),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn(require_api_version))
        .with_state(Socket { service, module })
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = ErrorResponse {
        message: message.to_owned(),
    };
    (status, Json(body)).into_response()
}

async fn require_api_version(request: Request, next: Next) -> Response {
    match ApiVersion::of_query(request.uri().query()) {
        Ok(_) => next.run(request).await,
        Err(refused) => error(StatusCode::BAD_REQUEST, &refused.to_string()),
    }
}

/// Refuses a caller that is not one of `module`'s processes, or a module id that is not this socket's.
async fn authorise(socket: &Socket, module: &str, peer: PeerCredentials) -> Result<(), Response> {
    let forbidden = || error(StatusCode::FORBIDDEN, "forbidden");
    if module.trim_start_matches('$') != socket.module.trim_start_matches('$') {
        return Err(forbidden());
    }
    let Some(pid) = peer.pid else {
        return Err(forbidden());
    };
    match socket.service.runtime.pids(&socket.module).await {
        Ok(pids) if pids.contains(&pid) => Ok(()),
        Ok(_) => {
            tracing::info!(
                module,
                pid,
                "workload call from a process that is not the module's: forbidden"
            );
            Err(forbidden())
        }
        Err(e) => {
            tracing::warn!(module, error = %e, "cannot list the module's processes: forbidden");
            Err(forbidden())
        }
    }
}

async fn trust_bundle(State(socket): State<Socket>) -> Response {
    Json(TrustBundleResponse {
        certificate: socket.service.ca.pem(),
    })
    .into_response()
}

async fn manifest_trust_bundle() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no manifest trust bundle is configured",
    )
}

fn body_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("invalid request body: {e}"),
        ))
    })
}

/// The body of a request from one of the socket's module processes, or the refusal to answer with.
async fn authorised_json<T: DeserializeOwned>(
    socket: &Socket,
    module: &str,
    peer: PeerCredentials,
    body: &[u8],
) -> Result<T, Box<Response>> {
    authorise(socket, module, peer).await.map_err(Box::new)?;
    body_json(body)
}

async fn sign(
    State(socket): State<Socket>,
    ConnectInfo(peer): ConnectInfo<PeerCredentials>,
    UrlPath((module, _genid)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    // The SDK sends no Content-Type. The primary key signs whatever `keyId` says, as in aziot-edged.
    let request: SignRequest = match authorised_json(&socket, &module, peer, &body).await {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let Ok(data) =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &request.data)
    else {
        return error(StatusCode::BAD_REQUEST, "data is not base64");
    };
    let Some(credentials) = socket.service.identities.get(&socket.module) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("module {} has no identity on this device", socket.module),
        );
    };
    match outpost_core::sign(&credentials.primary_key, &data) {
        Ok(digest) => Json(SignResponse { digest }).into_response(),
        Err(e) => {
            tracing::error!(module = %socket.module, error = %e, "cannot sign with the module key");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

async fn server_certificate(
    State(socket): State<Socket>,
    ConnectInfo(peer): ConnectInfo<PeerCredentials>,
    UrlPath((module, _genid)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let request: ServerCertificateRequest =
        match authorised_json(&socket, &module, peer, &body).await {
            Ok(request) => request,
            Err(refusal) => return *refusal,
        };
    let common_name = request.common_name.as_str();
    let module_name = socket.module.trim_start_matches('$').to_ascii_lowercase();
    // One label per module: the expiry a metric shows is that of the module's newest certificate.
    let label = format!("module {module_name} server");
    let issued = socket.service.ca.issue(
        &label,
        common_name,
        &[module_name.as_str()],
        socket.service.certificate_lifetime,
        outpost_pki::unix_now(),
    );
    match issued {
        Ok(issued) => {
            // The SDKs ask for a new certificate before this time; it is the certificate's own notAfter.
            let expiration = chrono::DateTime::from_timestamp(issued.info.not_after, 0)
                .unwrap_or_default()
                .to_rfc3339();
            let body = ServerCertificateResponse {
                private_key: PrivateKey {
                    kind: PrivateKeyKind::Key,
                    bytes: issued.key_pem,
                },
                certificate: issued.chain_pem,
                expiration,
            };
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            &format!("cannot issue a certificate for {common_name:?}: {e}"),
        ),
    }
}
