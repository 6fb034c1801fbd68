//! `POST /devices/query`: IoT Hub's query language over the twin documents, a page at a time.
//!
//! A query without aggregates or `TOP` reads the documents in id order from where the last page stopped
//! ([`crate::Twins::documents_after`], in batches) until the page is full, so the pages of a query read each
//! document once between them; its continuation token is the key of the last document read (`key:DEVICE[/MODULE]`:
//! ids cannot hold `/`). An aggregate or `TOP` query evaluates over every document, read a page at a time
//! ([`crate::Twins::each_document`]) keeping only its rows (one per group for aggregates), and its token is the
//! number of rows already answered (`rows:N`). Either way, the `deviceId`, tag and reported property equalities
//! of the `WHERE` clause are looked up in the storage's index first ([`crate::storage::index`]), and only the
//! documents they let through are read and evaluated. Tokens are opaque
//! to callers; a page that follows a write may miss or repeat a change made meanwhile, as IoT Hub's may.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_core::query::Query;
use serde_json::Value;

use super::{authorize, json_body, ApiError, HubState};
use crate::error::HubError;
use crate::identity::Right;
use crate::twins::DocumentKey;

/// The page size when the caller does not ask for one (`x-ms-max-item-count`).
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// The largest page a caller may ask for; larger asks are answered with pages of this size.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The header that asks for a page size.
const MAX_ITEM_COUNT: &str = "x-ms-max-item-count";

/// The header that carries the continuation token, both ways.
const CONTINUATION: &str = "x-ms-continuation";

/// The header that says what the rows are: `twin` for whole twin documents, `raw` for projections and
/// aggregates (the values of the C# SDK's `QueryResultType`).
const ITEM_TYPE: &str = "x-ms-item-type";

/// The page size a request asks for.
fn page_size(headers: &HeaderMap) -> Result<usize, ApiError> {
    let Some(value) = headers.get(MAX_ITEM_COUNT) else {
        return Ok(DEFAULT_PAGE_SIZE);
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        Some(0) | None => Err(ApiError::bad_request(
            "x-ms-max-item-count must be a positive integer",
        )),
        Some(size) => Ok(size.min(MAX_PAGE_SIZE)),
    }
}

/// Documents read at a time while filling a page of a query without aggregates.
const BATCH: usize = 2000;

/// Where a continuation token says to go on from.
enum Resume {
    /// From the first row.
    Start,
    /// After this many rows of the whole result (aggregate and `TOP` queries).
    Rows(usize),
    /// After this document (other queries).
    After(DocumentKey),
}

/// The place a request's continuation token stands for.
fn resume(headers: &HeaderMap) -> Result<Resume, ApiError> {
    let Some(value) = headers.get(CONTINUATION) else {
        return Ok(Resume::Start);
    };
    let refused = || ApiError::bad_request("the x-ms-continuation token is not one this hub gave");
    let token = value.to_str().map_err(|_| refused())?.trim();
    if let Some(rows) = token.strip_prefix("rows:") {
        return rows.parse().map(Resume::Rows).map_err(|_| refused());
    }
    let key = token.strip_prefix("key:").ok_or_else(refused)?;
    let (device, module) = match key.split_once('/') {
        Some((device, module)) => (device, Some(module.to_owned())),
        None => (key, None),
    };
    if device.is_empty() {
        return Err(refused());
    }
    Ok(Resume::After(DocumentKey {
        device: device.to_owned(),
        module,
    }))
}

/// One page of rows and the token of the next, if rows may remain.
type Page = (Vec<Value>, Option<String>);

/// A page of a query without aggregates or `TOP`: documents read in id order after `after` until `size` rows
/// matched or none are left.
async fn page_by_key(
    hub: &crate::Hub,
    query: &Query,
    after: Option<DocumentKey>,
    size: usize,
) -> Result<Page, HubError> {
    let mut rows = Vec::new();
    let mut last = after;
    let narrowing = query.narrowing();
    loop {
        let batch = hub
            .twins()
            .documents_after(query.collection(), last.clone(), BATCH, &narrowing)
            .await?;
        let exhausted = batch.len() < BATCH;
        for document in &batch {
            last = DocumentKey::of(document);
            rows.extend(query.run(std::iter::once(document)));
            if rows.len() >= size {
                let token = last.map(|key| match key.module {
                    Some(module) => format!("key:{}/{module}", key.device),
                    None => format!("key:{}", key.device),
                });
                return Ok((rows, token));
            }
        }
        if exhausted {
            return Ok((rows, None));
        }
    }
}

/// A page of an aggregate or `TOP` query: the whole result over every document (read a page at a time, keeping
/// only the rows, or one row per group), from row `from` on.
async fn page_by_offset(
    hub: &crate::Hub,
    query: &Query,
    from: usize,
    size: usize,
) -> Result<Page, HubError> {
    let mut result = query.rows();
    // A `TOP` query without aggregates needs its rows up to this page's end, and one more to know that more
    // remain.
    let needed = from.saturating_add(size).saturating_add(1);
    hub.twins()
        .each_document(query.collection(), &query.narrowing(), |document| {
            result.add(document);
            !result.is_full() && result.ungrouped_rows() < needed
        })
        .await?;
    let rows = result.finish();
    let page: Vec<Value> = rows.iter().skip(from).take(size).cloned().collect();
    let next = from.saturating_add(page.len());
    let token = (next < rows.len()).then(|| format!("rows:{next}"));
    Ok((page, token))
}

/// Reads the query text of a `QuerySpecification` body.
fn query_text(body: &Value) -> Result<&str, ApiError> {
    body.get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("the body must be {\"query\": \"SELECT ...\"}"))
}

/// Parses a query, refusing a malformed one with a 400 that says where it failed.
pub(crate) fn parse_query(text: &str) -> Result<Query, HubError> {
    Query::parse(text).map_err(|error| HubError::ArgumentInvalid(format!("invalid query: {error}")))
}

pub(super) async fn query_devices(
    State(hub): HubState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&hub, &headers, Right::RegistryRead)?;
    let body = json_body(&body)?;
    let query = parse_query(query_text(&body)?)?;
    let size = page_size(&headers)?;
    let by_key = !query.is_aggregate() && query.top().is_none();
    let (page, next) = match (resume(&headers)?, by_key) {
        (Resume::Start, true) => page_by_key(&hub, &query, None, size).await?,
        (Resume::After(key), true) => page_by_key(&hub, &query, Some(key), size).await?,
        (Resume::Start, false) => page_by_offset(&hub, &query, 0, size).await?,
        (Resume::Rows(from), false) => page_by_offset(&hub, &query, from, size).await?,
        _ => {
            return Err(ApiError::bad_request(
                "the x-ms-continuation token belongs to another query",
            ))
        }
    };
    // The query API does not say whether it projects; a row of `SELECT *` is a whole twin document, which a
    // projection's row is not unless it names every field of one.
    let whole_twins = !query.is_aggregate() && page.iter().all(is_twin_document);
    let item_type = if whole_twins { "twin" } else { "raw" };
    let mut response = (StatusCode::OK, axum::Json(Value::Array(page))).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(ITEM_TYPE, HeaderValue::from_static(item_type));
    if let Some(token) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response_headers.insert(CONTINUATION, token);
    }
    Ok(response)
}

/// Whether a row is a whole twin document (as [`crate::twins::twin_json`] makes them).
fn is_twin_document(row: &Value) -> bool {
    [
        "deviceId",
        "etag",
        "deviceEtag",
        "version",
        "tags",
        "properties",
    ]
    .iter()
    .all(|field| row.get(field).is_some())
}
