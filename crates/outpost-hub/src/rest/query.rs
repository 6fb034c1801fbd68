//! `POST /devices/query`: IoT Hub's query language over the twin documents, a page at a time.
//!
//! Each page evaluates the query over one consistent read of every document ([`crate::Twins::documents`]) and
//! answers the rows from the continuation token's offset on. The token is opaque to callers; it is the number
//! of rows already answered, so a page that follows a write may skip or repeat a row, as IoT Hub's may.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_core::query::Query;
use serde_json::Value;

use super::{authorize, json_body, ApiError, HubState};
use crate::error::HubError;
use crate::identity::Right;

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

/// The offset a continuation token stands for (0 without one).
fn offset(headers: &HeaderMap) -> Result<usize, ApiError> {
    let Some(value) = headers.get(CONTINUATION) else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .and_then(|token| token.trim().strip_prefix("rows:"))
        .and_then(|rows| rows.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request("the x-ms-continuation token is not one this hub gave")
        })
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
    let (size, from) = (page_size(&headers)?, offset(&headers)?);
    let documents = hub.twins().documents(query.collection()).await?;
    let rows = query.run(&documents);
    let page: Vec<Value> = rows.iter().skip(from).take(size).cloned().collect();
    let next = from.saturating_add(page.len());
    // The query API does not say whether it projects; a row of `SELECT *` is a whole twin document, which a
    // projection's row is not unless it names every field of one.
    let whole_twins = !query.is_aggregate() && page.iter().all(is_twin_document);
    let item_type = if whole_twins { "twin" } else { "raw" };
    let mut response = (StatusCode::OK, axum::Json(Value::Array(page))).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(ITEM_TYPE, HeaderValue::from_static(item_type));
    if next < rows.len() {
        if let Ok(token) = HeaderValue::from_str(&format!("rows:{next}")) {
            response_headers.insert(CONTINUATION, token);
        }
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
