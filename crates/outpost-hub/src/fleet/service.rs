//! The configurations service: stores configurations, answers them with their metrics, and evaluates them over
//! the fleet, one device per write job.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use outpost_core::query::{Collection, Narrowing, Query};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::assign::{Assignment, Status, EDGE_AGENT};
use super::configuration::{
    parse_metric_query, parse_target_condition, Configuration, ConfigurationKind, Metrics,
    MAX_CONFIGURATIONS,
};
use super::evaluate::{self, has_status, Snapshot};
use super::rollout::{driver, Rollout};
use super::schedule::{Action, Batch, Change, Event, FleetSignal, Schedule};
use crate::error::HubError;
use crate::registry::{device_id, Precondition};
use crate::storage::Tables;
use crate::twins::Twins;

/// How many devices an evaluation pass evaluates at once.
const CONCURRENT_EVALUATIONS: usize = 32;

/// How many device ids a pass over every device reads at a time.
const EVALUATION_PAGE: usize = 2000;

/// Automatic configurations and deployments: their records, metrics and evaluation.
#[derive(Clone)]
pub struct Configurations {
    twins: Twins,
    signal: FleetSignal,
    /// Who this process is when it holds a rollout's lease.
    owner: String,
}

impl Configurations {
    /// The service over the twins' storage, evaluating when `signal` says something changed.
    pub(crate) fn new(twins: Twins, signal: FleetSignal) -> Self {
        Self {
            twins,
            signal,
            owner: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Where the other services tell the evaluation what changed.
    pub(crate) fn signal(&self) -> &FleetSignal {
        &self.signal
    }

    /// Creates (no `If-Match`) or replaces (`If-Match` `*` or the current etag) a configuration; the stored
    /// record and whether it was created. Creating one past [`MAX_CONFIGURATIONS`] is throttled (429).
    pub async fn put(
        &self,
        id: &str,
        body: &Value,
        precondition: &Precondition,
    ) -> Result<(Configuration, bool), HubError> {
        let (id, body, precondition) = (id.to_owned(), body.clone(), precondition.clone());
        let stored = self
            .twins
            .storage()
            .write(move |tx| {
                let existing = tx.configuration(&id)?;
                match (&existing, &precondition) {
                    (Some(_), Precondition::CreateOnly) => {
                        return Err(HubError::ConfigurationAlreadyExists(id))
                    }
                    (Some(current), _) => precondition.check(&current.etag())?,
                    (None, Precondition::Etag(_)) => {
                        return Err(HubError::ConfigurationNotFound(id))
                    }
                    (None, _) => {
                        if tx.configurations()?.len() >= MAX_CONFIGURATIONS {
                            return Err(HubError::Throttled(format!(
                                "at most {MAX_CONFIGURATIONS} configurations may exist in a hub"
                            )));
                        }
                    }
                }
                let record =
                    Configuration::from_request(&id, &body, existing.as_ref(), Utc::now())?;
                tx.put_configuration(&record)?;
                if let (None, Some(policy)) = (&existing, &record.rollout) {
                    // Stored in the same transaction: no evaluation may see the deployment without its rollout.
                    tx.put_rollout(&Rollout::new(&record.id, policy.clone()))?;
                }
                Ok((record, existing.is_none()))
            })
            .await?;
        self.signal.changed(super::schedule::Change::Everything);
        Ok(stored)
    }

    /// Deletes a configuration (`If-Match` `*`, absent, or the current etag).
    pub async fn delete(&self, id: &str, precondition: &Precondition) -> Result<(), HubError> {
        let (id, precondition) = (id.to_owned(), precondition.clone());
        self.twins
            .storage()
            .write(move |tx| {
                let current = tx
                    .configuration(&id)?
                    .ok_or_else(|| HubError::ConfigurationNotFound(id.clone()))?;
                precondition.check(&current.etag())?;
                tx.delete_configuration(&id)?;
                Ok::<_, HubError>(())
            })
            .await?;
        self.signal.changed(super::schedule::Change::Everything);
        Ok(())
    }

    /// One configuration's REST JSON with its metrics.
    pub async fn get(&self, id: &str) -> Result<Value, HubError> {
        let id = id.to_owned();
        let mut shown = self
            .show(move |tx| {
                let configuration = tx
                    .configuration(&id)?
                    .ok_or_else(|| HubError::ConfigurationNotFound(id.clone()))?;
                Ok(vec![configuration])
            })
            .await?;
        Ok(shown.pop().unwrap_or_default())
    }

    /// At most `top` configurations' REST JSON with their metrics, ordered by id.
    pub async fn list(&self, top: Option<usize>) -> Result<Vec<Value>, HubError> {
        self.show(move |tx| {
            let mut configurations = tx.configurations()?;
            configurations.truncate(top.unwrap_or(usize::MAX));
            Ok(configurations)
        })
        .await
    }

    /// The REST JSON of the configurations `select` reads, with their system metrics (from the assignments,
    /// in the same read) and custom metrics (run over the fleet's twin documents, read once per collection).
    async fn show(
        &self,
        select: impl FnOnce(&mut dyn Tables) -> Result<Vec<Configuration>, HubError> + Send + 'static,
    ) -> Result<Vec<Value>, HubError> {
        let measured: Vec<(Configuration, Metrics, Option<Rollout>)> = self
            .twins
            .storage()
            .read(move |tx| {
                let configurations = select(tx)?;
                let assignments = tx.assignments()?;
                let mut rollouts: BTreeMap<String, Rollout> = tx
                    .rollouts()?
                    .into_iter()
                    .map(|r| (r.deployment.clone(), r))
                    .collect();
                configurations
                    .into_iter()
                    .map(|c| {
                        let mut metrics = system_metrics(tx, &c, &assignments)?;
                        let rollout = rollouts.remove(&c.id);
                        if let Some(rollout) = &rollout {
                            super::rollout::show::add_metrics(&mut metrics, rollout);
                        }
                        Ok((c, metrics, rollout))
                    })
                    .collect::<Result<Vec<_>, HubError>>()
            })
            .await?;
        let counts = self.metric_counts(&measured).await?;
        let mut shown = Vec::with_capacity(measured.len());
        for (at, (configuration, system, rollout)) in measured.into_iter().enumerate() {
            let mut metrics = Metrics {
                queries: configuration.metric_queries.clone(),
                ..Metrics::default()
            };
            for ((of, name), rows) in &counts {
                if *of == at {
                    metrics.results.insert(name.clone(), *rows as u64);
                }
            }
            let mut json = configuration.to_json(&system, &metrics);
            if let (Some(rollout), Some(object)) = (&rollout, json.as_object_mut()) {
                object.insert(
                    "rollout".into(),
                    super::rollout::show::rollout_json(rollout),
                );
            }
            shown.push(json);
        }
        Ok(shown)
    }

    /// The row count of every custom metric query, by configuration (its index in `measured`) and name. The
    /// fleet is read a page at a time: once for each query the index narrows, once per collection for all the
    /// others together; only counts (and one row per group of an aggregate) are kept.
    async fn metric_counts(
        &self,
        measured: &[(Configuration, Metrics, Option<Rollout>)],
    ) -> Result<BTreeMap<(usize, String), usize>, HubError> {
        let mut queries: Vec<((usize, String), Query)> = Vec::new();
        for (at, (configuration, _, _)) in measured.iter().enumerate() {
            for (name, text) in &configuration.metric_queries {
                // Stored queries were checked when they were put.
                if let Ok(query) = Query::parse(text) {
                    queries.push(((at, name.clone()), query));
                }
            }
        }
        let mut counts = BTreeMap::new();
        let mut unnarrowed: HashMap<Collection, Vec<usize>> = HashMap::new();
        for (i, (key, query)) in queries.iter().enumerate() {
            let narrowing = query.narrowing();
            if narrowing.is_empty() {
                unnarrowed.entry(query.collection()).or_default().push(i);
                continue;
            }
            let mut rows = query.row_count();
            self.twins
                .each_document(query.collection(), &narrowing, |document| {
                    rows.add(document);
                    !rows.is_full()
                })
                .await?;
            counts.insert(key.clone(), rows.count());
        }
        for (collection, together) in unnarrowed {
            let mut rows: Vec<_> = together.iter().map(|&i| queries[i].1.row_count()).collect();
            self.twins
                .each_document(collection, &Narrowing::default(), |document| {
                    for counted in &mut rows {
                        counted.add(document);
                    }
                    true
                })
                .await?;
            for (&i, counted) in together.iter().zip(rows) {
                counts.insert(queries[i].0.clone(), counted.count());
            }
        }
        Ok(counts)
    }

    /// `POST /configurations/testQueries`: the error of the target condition and of each metric query
    /// (empty strings when they parse).
    pub fn test_queries(body: &Value) -> Result<Value, HubError> {
        let object = body
            .as_object()
            .ok_or_else(|| HubError::ArgumentInvalid("the body must be a JSON object".into()))?;
        let condition = object
            .get("targetCondition")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let condition_error = if condition.trim().is_empty() {
            String::new()
        } else {
            // A module configuration's condition starts with FROM devices.modules; either form is tested.
            parse_target_condition(condition, ConfigurationKind::Module)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let mut metric_errors = Map::new();
        for (name, query) in object
            .get("customMetricQueries")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let error = match query.as_str() {
                Some(query) => parse_metric_query(query)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                None => "the query must be a string".into(),
            };
            metric_errors.insert(name.clone(), error.into());
        }
        Ok(json!({
            "targetConditionError": condition_error,
            "customMetricQueryErrors": metric_errors,
        }))
    }

    /// Evaluates one device: writes what configurations give it where its twins differ; whether it wrote.
    pub async fn evaluate_device(&self, device: &str) -> Result<bool, HubError> {
        let snapshot = self.snapshot().await?;
        self.evaluate_with(device, snapshot).await
    }

    /// The configurations and rollouts an evaluation pass evaluates against, read once.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, HubError> {
        let snapshot = self.twins.storage().read(|tx| Snapshot::read(tx)).await?;
        Ok(Arc::new(snapshot))
    }

    /// [`Configurations::evaluate_device`] against a snapshot of the configurations.
    async fn evaluate_with(&self, device: &str, snapshot: Arc<Snapshot>) -> Result<bool, HubError> {
        let id = device_id(device)?;
        let (read, read_snapshot) = (id.clone(), snapshot.clone());
        let differs = self
            .twins
            .storage()
            .read(move |tx| Ok::<_, HubError>(evaluate::plan(tx, &read, &read_snapshot)?.is_some()))
            .await?;
        if !differs {
            return Ok(false);
        }
        let changes = self.twins.twin_changes();
        // Planned again inside the write: what is written follows from what the transaction sees of the
        // device, so two replicas evaluating the same device write the same thing, and the second nothing.
        let (notifications, appended) = self
            .twins
            .storage()
            .write(move |tx| match evaluate::plan(tx, &id, &snapshot)? {
                Some(plan) => evaluate::apply(tx, &id, plan, &changes),
                None => Ok((Vec::new(), Vec::new())),
            })
            .await?;
        self.twins.committed(&appended, notifications);
        Ok(true)
    }

    /// Evaluates every device that may need it; how many it wrote to.
    ///
    /// When the index can narrow every configuration's target, only the devices it finds and those that hold
    /// an assignment are evaluated: any other matches no configuration and was given nothing, so its plan is
    /// empty. Otherwise every device is, its ids read a page at a time.
    pub async fn evaluate_all(&self) -> Result<usize, HubError> {
        let snapshot = self.snapshot().await?;
        if let Some(narrowings) = snapshot.narrowings() {
            let candidates = self.candidates(narrowings).await?;
            return Ok(self.evaluate_devices(candidates, snapshot).await);
        }
        let mut written = 0;
        let mut after: Option<String> = None;
        loop {
            let from = after.clone();
            let ids = self
                .twins
                .storage()
                .read(move |tx| Ok::<_, HubError>(tx.device_ids(from.as_deref(), EVALUATION_PAGE)?))
                .await?;
            let last_page = ids.len() < EVALUATION_PAGE;
            after = ids.last().cloned();
            written += self.evaluate_devices(ids, snapshot.clone()).await;
            if last_page || after.is_none() {
                return Ok(written);
            }
        }
    }

    /// The ids of the devices the narrowed targets can select (a page at a time, through the index) and of
    /// those holding an assignment.
    async fn candidates(
        &self,
        narrowings: Vec<(Collection, Narrowing)>,
    ) -> Result<BTreeSet<String>, HubError> {
        let mut candidates: BTreeSet<String> = self
            .twins
            .storage()
            .read(|tx| Ok::<_, HubError>(tx.assigned_devices()?))
            .await?
            .into_iter()
            .collect();
        for (collection, narrowing) in narrowings {
            let mut after: Option<(String, String)> = None;
            loop {
                let (from, narrowing) = (after.clone(), narrowing.clone());
                let keys: Vec<(String, String)> = self
                    .twins
                    .storage()
                    .read(move |tx| {
                        let keys = match collection {
                            Collection::Devices => tx
                                .device_twins(
                                    from.as_ref().map(|(d, _)| d.as_str()),
                                    EVALUATION_PAGE,
                                    &narrowing,
                                )?
                                .into_iter()
                                .map(|(d, _)| (d.device_id.to_string(), String::new()))
                                .collect(),
                            Collection::Modules => tx
                                .module_twins(
                                    from.as_ref().map(|(d, m)| (d.as_str(), m.as_str())),
                                    EVALUATION_PAGE,
                                    &narrowing,
                                )?
                                .into_iter()
                                .map(|(d, m, _)| (d.device_id.to_string(), m.module_id.to_string()))
                                .collect(),
                        };
                        Ok::<_, HubError>(keys)
                    })
                    .await?;
                let last_page = keys.len() < EVALUATION_PAGE;
                after = keys.last().cloned();
                candidates.extend(keys.into_iter().map(|(device, _)| device));
                if last_page {
                    break;
                }
            }
        }
        Ok(candidates)
    }

    /// Evaluates devices against one snapshot, [`CONCURRENT_EVALUATIONS`] at a time (so that their writes share
    /// group commits); how many it wrote to.
    async fn evaluate_devices(
        &self,
        devices: impl IntoIterator<Item = String>,
        snapshot: Arc<Snapshot>,
    ) -> usize {
        let mut running = tokio::task::JoinSet::new();
        let mut written = 0;
        let mut finished = |result: Result<(String, Result<bool, HubError>), _>| match result {
            Ok((_, Ok(wrote))) => written += usize::from(wrote),
            Ok((device, Err(error))) => {
                tracing::warn!(%device, %error, "configuration evaluation failed");
            }
            Err(error) => tracing::warn!(%error, "a configuration evaluation task failed"),
        };
        for device in devices {
            if running.len() >= CONCURRENT_EVALUATIONS {
                if let Some(result) = running.join_next().await {
                    finished(result);
                }
            }
            let (service, snapshot) = (self.clone(), snapshot.clone());
            running.spawn(async move {
                let result = service.evaluate_with(&device, snapshot).await;
                (device, result)
            });
        }
        while let Some(result) = running.join_next().await {
            finished(result);
        }
        written
    }

    /// Evaluates a batch of devices.
    async fn evaluate(&self, batch: Batch) {
        if batch.all {
            if let Err(error) = self.evaluate_all().await {
                tracing::warn!(%error, "configuration evaluation failed");
            }
        } else {
            match self.snapshot().await {
                Ok(snapshot) => {
                    self.evaluate_devices(batch.devices, snapshot).await;
                }
                Err(error) => tracing::warn!(%error, "configuration evaluation failed"),
            }
        }
    }

    /// The evaluation task: the one owner of the [`Schedule`] on this replica, until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut schedule = Schedule::new(Instant::now());
        loop {
            let wake = tokio::time::Instant::from_std(schedule.next_wake());
            let event = tokio::select! {
                batch = self.signal.next() => {
                    let now = Instant::now();
                    if batch.all {
                        schedule.handle(Event::Changed(super::schedule::Change::Everything), now);
                    }
                    for device in batch.devices {
                        schedule.handle(Event::Changed(super::schedule::Change::Device(device)), now);
                    }
                    continue;
                }
                () = tokio::time::sleep_until(wake) => Event::Tick,
                _ = shutdown.changed() => return,
            };
            for action in schedule.handle(event, Instant::now()) {
                let Action::Evaluate(batch) = action;
                self.evaluate(batch).await;
            }
        }
    }
}

impl Configurations {
    /// Pauses, resumes or aborts the rollout of deployment `id` (`POST /configurations/{id}/rollout/{command}`);
    /// the configuration's REST JSON afterwards.
    pub async fn rollout_command(&self, id: &str, command: &str) -> Result<Value, HubError> {
        let event = match command {
            "pause" => super::rollout::Event::Pause,
            "resume" => super::rollout::Event::Resume,
            "abort" => super::rollout::Event::Abort,
            other => {
                return Err(HubError::ArgumentInvalid(format!(
                    "unknown rollout command {other:?} (pause, resume, abort)"
                )))
            }
        };
        let online = self.online().await?;
        let (id_owned, owner) = (id.to_owned(), self.owner.clone());
        let evaluate = self
            .twins
            .storage()
            .write(move |tx| {
                tx.configuration(&id_owned)?
                    .ok_or_else(|| HubError::ConfigurationNotFound(id_owned.clone()))?;
                if tx.rollout(&id_owned)?.is_none() {
                    return Err(HubError::ArgumentInvalid(format!(
                        "configuration {id_owned:?} has no rollout"
                    )));
                }
                // The operator's command takes the lease whoever held it: it must not wait for another replica.
                tx.claim_rollout(&id_owned, &owner, i64::MAX, 0)?;
                driver::step(tx, &id_owned, &owner, &online, Some(event), Utc::now())
            })
            .await?;
        for device in evaluate.unwrap_or_default() {
            self.signal.changed(Change::Device(device));
        }
        self.get(id).await
    }

    /// One step of every active rollout this process holds (or can take) the lease of.
    pub async fn drive_rollouts(&self) -> Result<(), HubError> {
        let rollouts = self.rollouts().await?;
        if !rollouts.iter().any(|r| r.phase.is_active()) {
            return Ok(());
        }
        let online = self.connected(&rollouts).await;
        let active = rollouts.into_iter().filter(|r| r.phase.is_active());
        for id in active.map(|r| r.deployment) {
            let (owner, online) = (self.owner.clone(), online.clone());
            let evaluate = self
                .twins
                .storage()
                .write(move |tx| driver::step(tx, &id, &owner, &online, None, Utc::now()))
                .await?;
            for device in evaluate.unwrap_or_default() {
                self.signal.changed(Change::Device(device));
            }
        }
        Ok(())
    }

    /// Every rollout.
    async fn rollouts(&self) -> Result<Vec<Rollout>, HubError> {
        self.twins
            .storage()
            .read(|tx| Ok::<_, HubError>(tx.rollouts()?))
            .await
    }

    /// The devices judged by the rollouts that are connected now (to any replica).
    async fn connected(&self, rollouts: &[Rollout]) -> HashSet<String> {
        let clients = driver::judged_clients(rollouts);
        let connected = self.twins.connections().connected_clients(&clients).await;
        driver::online_devices(connected)
    }

    /// The devices judged by any rollout that are connected now.
    async fn online(&self) -> Result<HashSet<String>, HubError> {
        let rollouts = self.rollouts().await?;
        Ok(self.connected(&rollouts).await)
    }

    /// The rollout driver task: a step on every twin change and every [`driver::TICK`], until `shutdown`.
    pub async fn run_rollouts(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.drive_rollouts().await {
                tracing::warn!(%error, "rollout step failed");
            }
            tokio::select! {
                () = self.signal.rollout_changes() => {
                    // Lets the evaluation that the change triggered commit first (it is debounced).
                    tokio::time::sleep(super::schedule::DEBOUNCE * 2).await;
                }
                () = tokio::time::sleep(driver::TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The system metrics IoT Hub shows: targeted and applied counts, and for edge deployments the devices whose
/// `$edgeAgent` reported success or failure with the current desired version.
fn system_metrics(
    tx: &mut dyn Tables,
    configuration: &Configuration,
    assignments: &[(String, Assignment)],
) -> Result<Metrics, HubError> {
    let id = configuration.id.as_str();
    let kind = configuration.kind();
    let condition = configuration.where_clause();
    let mut metrics = Metrics::default();
    let count = |status: Option<Status>| -> u64 {
        assignments
            .iter()
            .map(|(_, a)| {
                a.twins
                    .keys()
                    .filter(|twin| has_status(a, twin, id, status))
                    .count() as u64
            })
            .sum()
    };
    metrics.results.insert("targetedCount".into(), count(None));
    metrics
        .results
        .insert("appliedCount".into(), count(Some(Status::Applied)));
    let applied = format!("configurations.[[{id}]].status = 'Applied'");
    let (targeted_query, applied_query) = match kind {
        ConfigurationKind::BaseDeployment | ConfigurationKind::LayeredDeployment => (
            format!(
                "select deviceId from devices where capabilities.iotEdge = true and {condition}"
            ),
            format!(
                "select deviceId from devices.modules where moduleId = '$edgeAgent' and {applied}"
            ),
        ),
        ConfigurationKind::Device => (
            format!("select deviceId from devices where {condition}"),
            format!("select deviceId from devices where {applied}"),
        ),
        ConfigurationKind::Module => (
            format!("select deviceId, moduleId from devices.modules where {condition}"),
            format!("select deviceId, moduleId from devices.modules where {applied}"),
        ),
    };
    metrics
        .queries
        .insert("targetedCount".into(), targeted_query);
    metrics
        .queries
        .insert("appliedCount".into(), applied_query.clone());
    if matches!(
        kind,
        ConfigurationKind::BaseDeployment | ConfigurationKind::LayeredDeployment
    ) {
        let (mut successful, mut failed) = (0, 0);
        for (device, assignment) in assignments {
            if !has_status(assignment, EDGE_AGENT, id, Some(Status::Applied)) {
                continue;
            }
            let (Ok(device), Ok(agent)) = (
                outpost_core::DeviceId::new(device),
                outpost_core::ModuleId::new(EDGE_AGENT),
            ) else {
                continue;
            };
            let Some(twin) = tx.twin(&device, Some(&agent))? else {
                continue;
            };
            let reported = twin.reported();
            let current = reported.get("lastDesiredVersion").and_then(Value::as_u64)
                == Some(twin.desired_version());
            match reported
                .get("lastDesiredStatus")
                .and_then(|s| s.get("code"))
                .and_then(Value::as_u64)
            {
                Some(200) if current => successful += 1,
                Some(_) if current => failed += 1,
                _ => {}
            }
        }
        metrics
            .results
            .insert("reportedSuccessfulCount".into(), successful);
        metrics.results.insert("reportedFailedCount".into(), failed);
        let current = "properties.desired.$version = properties.reported.lastDesiredVersion";
        metrics.queries.insert(
            "reportedSuccessfulCount".into(),
            format!("{applied_query} and {current} and properties.reported.lastDesiredStatus.code = 200"),
        );
        metrics.queries.insert(
            "reportedFailedCount".into(),
            format!("{applied_query} and {current} and properties.reported.lastDesiredStatus.code != 200"),
        );
    }
    Ok(metrics)
}

/// The `configurations` of one twin's document, for `Twins` to show (`None` when none targets it).
pub(crate) fn shown_configurations(assignment: Option<&Assignment>, twin: &str) -> Option<Value> {
    let statuses: BTreeMap<_, _> = assignment?
        .twins
        .get(twin)?
        .configurations
        .iter()
        .map(|(id, status)| (id.clone(), json!({ "status": status })))
        .collect();
    (!statuses.is_empty()).then(|| json!(statuses))
}
