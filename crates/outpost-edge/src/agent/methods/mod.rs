//! `$edgeAgent`'s direct methods, as Azure IoT Edge's agent answers them, so that `az iot hub
//! invoke-module-method --module-id '$edgeAgent'` and the portal's troubleshooting page work: `ping`,
//! `RestartModule`, `GetModuleLogs`, `UploadModuleLogs`, `UploadSupportBundle` and `GetTaskStatus`.
//!
//! Calls arrive over the agent's own module client ([`super::sdk_link`]); [`MethodService::serve`] answers at
//! most [`MAX_CALLS_AT_ONCE`] at a time. Logs are read as streams and filtered line by line
//! ([`log_filter`], [`logs`]); uploads run in the background, tracked in a bounded [`tasks::TaskTable`], and
//! PUT to the caller's `sasUrl` ([`upload`]). Payload shapes are in [`wire`].

pub mod log_filter;
pub mod logs;
pub mod tasks;
pub mod upload;
pub mod wire;

use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use outpost_sdk::{Incoming, MethodCall};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::task::JoinSet;

use self::logs::{Layout, ModuleQuery, Origin};
use self::tasks::TaskTable;
use self::upload::Uploader;
use self::wire::{
    check_schema, error_payload, LogContentType, LogEncoding, ModuleLogsRequest,
    RestartModuleRequest, SupportBundleRequest, TaskState, TaskStatusRequest,
};
use super::{Agent, RestartModuleError};
use crate::runtime::RuntimeError;
use crate::support_bundle::BundleError;
use crate::support_bundle::{BundleOptions, BundleSources};

/// How many calls are answered at once; further calls wait in the SDK's stream.
pub const MAX_CALLS_AT_ONCE: usize = 8;

/// An answer: the status and the JSON payload.
pub type Answer = (i32, Value);

/// Answers `$edgeAgent`'s direct methods.
pub struct MethodService {
    sources: BundleSources,
    uploader: Uploader,
    /// A std `Mutex`: held only to read or change the table, never across an `.await`.
    tasks: Mutex<TaskTable>,
    /// The uploads under way; dropped with the service, which aborts them.
    uploads: Mutex<JoinSet<()>>,
}

impl MethodService {
    /// The service for a daemon's agent and edge hub; fails when `[upload] trusted_ca` cannot be used.
    pub fn new(sources: BundleSources) -> Result<Arc<Self>, upload::UploadError> {
        let uploader = Uploader::new(sources.agent.config.upload.trusted_ca.as_deref())?;
        Ok(Arc::new(Self {
            sources,
            uploader,
            tasks: Mutex::new(TaskTable::default()),
            uploads: Mutex::new(JoinSet::new()),
        }))
    }

    fn agent(&self) -> &Agent {
        &self.sources.agent
    }

    /// Answers the calls of `calls` until the stream ends (the client stopped), at most
    /// [`MAX_CALLS_AT_ONCE`] at a time.
    pub async fn serve(self: Arc<Self>, mut calls: Incoming<MethodCall>) {
        let mut running = JoinSet::new();
        loop {
            if running.len() >= MAX_CALLS_AT_ONCE {
                running.join_next().await;
                continue;
            }
            tokio::select! {
                call = calls.next() => {
                    let Some(call) = call else { break };
                    let service = self.clone();
                    running.spawn(async move {
                        let (status, payload) = service.handle(call.name(), call.payload()).await;
                        let name = call.name().to_owned();
                        if let Err(error) = call.respond(status, payload).await {
                            tracing::warn!(method = name, %error, "cannot answer a $edgeAgent method");
                        }
                    });
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// The answer to one call. Method names are matched without regard to case, as Azure's agent does.
    pub async fn handle(self: &Arc<Self>, name: &str, payload: &Value) -> Answer {
        tracing::info!(method = name, "$edgeAgent direct method");
        match name.to_ascii_lowercase().as_str() {
            "ping" => (200, Value::Null),
            "restartmodule" => self.restart_module(payload).await,
            "getmodulelogs" => self.get_module_logs(payload).await,
            "uploadmodulelogs" => self.upload_module_logs(payload),
            "uploadsupportbundle" => self.upload_support_bundle(payload),
            "gettaskstatus" => self.task_status(payload),
            _ => (
                404,
                error_payload(format!("$edgeAgent has no method {name:?}")),
            ),
        }
    }

    async fn restart_module(&self, payload: &Value) -> Answer {
        let request: RestartModuleRequest = match parse(payload) {
            Ok(request) => request,
            Err(answer) => return answer,
        };
        if let Err(error) = check_schema(&request.schema_version) {
            return (400, error_payload(error.to_string()));
        }
        match self.agent().restart_module(&request.id).await {
            Ok(()) => (200, Value::Null),
            Err(e @ RestartModuleError::NotDeployed(_)) => (404, error_payload(e.to_string())),
            Err(e) => (500, error_payload(e.to_string())),
        }
    }

    /// The deployed modules' names and what an items list asks of them (a refusal is the caller's 400).
    async fn queries(&self, request: &ModuleLogsRequest) -> Result<Vec<ModuleQuery>, QueryError> {
        check_schema(&request.schema_version)?;
        let modules = self.agent().deployed_module_names().await;
        Ok(logs::queries(&request.items, &modules, Utc::now())?)
    }

    fn origin(&self) -> Origin<'_> {
        let device = &self.agent().device;
        Origin {
            hub: &device.hub_hostname,
            device: &device.device_id,
        }
    }

    async fn get_module_logs(&self, payload: &Value) -> Answer {
        let request: ModuleLogsRequest = match parse(payload) {
            Ok(request) => request,
            Err(answer) => return answer,
        };
        let queries = match self.queries(&request).await {
            Ok(queries) => queries,
            Err(error) => return (400, error_payload(error.to_string())),
        };
        let layout = Layout::answer(request.content_type, request.encoding, queries.len());
        let mut items = Vec::with_capacity(queries.len());
        for query in &queries {
            match logs::read(self.agent().runtime.as_ref(), query, layout, self.origin()).await {
                Ok(selection) => items.push(logs::answer_item(
                    &selection,
                    layout,
                    self.origin(),
                    &query.module,
                )),
                Err(error) => return (500, error_payload(error.to_string())),
            }
        }
        match serde_json::to_value(&items) {
            Ok(value) => (200, value),
            Err(error) => (500, error_payload(error.to_string())),
        }
    }

    fn upload_module_logs(self: &Arc<Self>, payload: &Value) -> Answer {
        let request: ModuleLogsRequest = match parse(payload) {
            Ok(request) => request,
            Err(answer) => return answer,
        };
        let Some(sas_url) = request.sas_url.clone() else {
            return (400, error_payload("sasUrl is required"));
        };
        if let Err(error) = upload::check_sas_url(&sas_url) {
            return (400, error_payload(error.to_string()));
        }
        self.start_task(move |service| async move {
            let queries = service.queries(&request).await?;
            let layout = Layout::upload(request.content_type, request.encoding);
            let stamp = Utc::now().format("%Y-%m-%d--%H-%M-%S").to_string();
            let extension = match (request.content_type, request.encoding) {
                (LogContentType::Text, LogEncoding::None) => "log",
                (LogContentType::Json, LogEncoding::None) => "json",
                (LogContentType::Text, LogEncoding::Gzip) => "log.gz",
                (LogContentType::Json, LogEncoding::Gzip) => "json.gz",
            };
            let content_type = match request.encoding {
                LogEncoding::Gzip => "application/gzip",
                LogEncoding::None if request.content_type == LogContentType::Json => {
                    "application/json"
                }
                LogEncoding::None => "text/plain; charset=utf-8",
            };
            let origin = service.origin();
            for query in &queries {
                let selection =
                    logs::read(service.agent().runtime.as_ref(), query, layout, origin).await?;
                let body = logs::render(&selection, layout, origin, &query.module);
                let blob = format!("{}-{stamp}.{extension}", query.module);
                service
                    .uploader
                    .put(
                        &sas_url,
                        &[origin.hub, origin.device, &blob],
                        content_type,
                        body,
                    )
                    .await?;
            }
            Ok(())
        })
    }

    fn upload_support_bundle(self: &Arc<Self>, payload: &Value) -> Answer {
        let request: SupportBundleRequest = match parse(payload) {
            Ok(request) => request,
            Err(answer) => return answer,
        };
        if let Err(error) = check_schema(&request.schema_version) {
            return (400, error_payload(error.to_string()));
        }
        if let Err(error) = upload::check_sas_url(&request.sas_url) {
            return (400, error_payload(error.to_string()));
        }
        let now = Utc::now();
        let time = |field: &str, spec: &Option<String>| {
            spec.as_deref()
                .map(|s| log_filter::parse_time_spec(s, now))
                .transpose()
                .map_err(|e| (400, error_payload(format!("{field}: {e}"))))
        };
        let options = match (time("since", &request.since), time("until", &request.until)) {
            (Ok(since), Ok(until)) => BundleOptions {
                since,
                until,
                runtime_only: request.edge_runtime_only,
            },
            (Err(answer), _) | (_, Err(answer)) => return answer,
        };
        self.start_task(move |service| async move {
            let bundle = crate::support_bundle::build(&service.sources, &options).await?;
            let origin = service.origin();
            let blob = format!("support-bundle-{}.tar.gz", now.format("%Y-%m-%d--%H-%M-%S"));
            service
                .uploader
                .put(
                    &request.sas_url,
                    &[origin.hub, origin.device, &blob],
                    "application/gzip",
                    bundle,
                )
                .await?;
            Ok(())
        })
    }

    /// Tracks a new background task and starts it; answers with its status at once.
    fn start_task<F, Fut>(self: &Arc<Self>, work: F) -> Answer
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), UploadTaskError>> + Send,
    {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let admitted = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(correlation_id.clone());
        let status = match admitted {
            Ok(status) => status,
            Err(busy) => return (429, error_payload(busy.to_string())),
        };
        let service = self.clone();
        let mut uploads = self.uploads.lock().unwrap_or_else(PoisonError::into_inner);
        // Reap finished uploads so that the set holds only those under way (at most the table's size).
        while uploads.try_join_next().is_some() {}
        uploads.spawn(async move {
            service.set_task(&correlation_id, TaskState::Running, String::new());
            let (state, message) = match work(service.clone()).await {
                Ok(()) => (TaskState::Completed, String::new()),
                Err(error) => {
                    tracing::warn!(correlation_id, %error, "a $edgeAgent upload failed");
                    (TaskState::Failed, error.to_string())
                }
            };
            service.set_task(&correlation_id, state, message);
        });
        match serde_json::to_value(status) {
            Ok(value) => (200, value),
            Err(error) => (500, error_payload(error.to_string())),
        }
    }

    fn set_task(&self, correlation_id: &str, state: TaskState, message: String) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(correlation_id, state, message);
    }

    fn task_status(&self, payload: &Value) -> Answer {
        let request: TaskStatusRequest = match parse(payload) {
            Ok(request) => request,
            Err(answer) => return answer,
        };
        if let Err(error) = check_schema(&request.schema_version) {
            return (400, error_payload(error.to_string()));
        }
        let status = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .status(&request.correlation_id);
        match serde_json::to_value(status) {
            Ok(value) => (200, value),
            Err(error) => (500, error_payload(error.to_string())),
        }
    }
}

/// Why a logs request's items cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Its `schemaVersion`.
    #[error(transparent)]
    Schema(#[from] wire::SchemaVersionError),
    /// Its items.
    #[error(transparent)]
    Request(#[from] logs::LogsRequestError),
}

/// Why a background upload failed (its task's status carries the message).
#[derive(Debug, thiserror::Error)]
pub enum UploadTaskError {
    /// What to upload could not be worked out.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A module's logs could not be read.
    #[error(transparent)]
    Logs(#[from] RuntimeError),
    /// The support bundle could not be built.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The upload failed.
    #[error(transparent)]
    Upload(#[from] upload::UploadError),
}

/// A request payload, or a 400 answer saying what is wrong with it.
fn parse<T: DeserializeOwned>(payload: &Value) -> Result<T, Answer> {
    T::deserialize(payload).map_err(|e| (400, error_payload(format!("invalid payload: {e}"))))
}
