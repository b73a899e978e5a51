//! The ingest error: an HTTP status plus `{"error":{"code","field","message"}}`,
//! naming the field a producer must fix.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A refused request. The message never quotes secrets; it may quote the
/// offending value when it is short and not a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: String,
    pub message: String,
    /// Seconds for a Retry-After header (503 on overload).
    pub retry_after: Option<u64>,
}

impl IngestError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        IngestError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            field: field.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn missing(field: impl Into<String>) -> Self {
        let field = field.into();
        IngestError {
            status: StatusCode::BAD_REQUEST,
            code: "missing_field",
            message: format!("{field} is required"),
            field,
            retry_after: None,
        }
    }

    pub fn unknown(field: impl Into<String>) -> Self {
        let field = field.into();
        IngestError {
            status: StatusCode::BAD_REQUEST,
            code: "unknown_field",
            message: format!("unknown field {field:?}"),
            field,
            retry_after: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }

    /// Prefix the field with its place in a batch: `messages[3].text`.
    pub fn at_index(mut self, i: usize) -> Self {
        self.field = if self.field.is_empty() {
            format!("messages[{i}]")
        } else {
            format!("messages[{i}].{}", self.field)
        };
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "field": self.field, "message": self.message}})
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}
