//! One request through an axum router, as the REST tests send them.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

/// Sends `request` through `router`; returns the status and the JSON body (null when the body is not JSON).
pub async fn answer(router: axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let answer = router.oneshot(request).await.unwrap();
    let status = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}
