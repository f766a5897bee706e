//! What can go wrong for a client, and how it is answered.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error a client gets, with the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// No or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// Too big.
    #[error("{0}")]
    TooLarge(String),
    /// Not a rule module Baton can run.
    #[error("{0}")]
    BadModule(String),
    /// The rules refused (e.g. a start with bad options).
    #[error("{0}")]
    Refused(String),
    /// The rules failed (trap, fuel, memory); the session is unchanged.
    #[error("{0}")]
    RulesFailed(String),
    /// The session lives on another node now: reconnect (and be routed).
    #[error("{0}")]
    Moved(String),
    /// Try again later: full, not ready, moving, a peer out of reach.
    #[error("{0}")]
    Unavailable(String),
    /// Try again later: this node's instance pool or store failed. Answered
    /// like [`NodeError::Unavailable`]; the node also turns not ready for a
    /// moment, so that new players go elsewhere.
    #[error("{0}")]
    Failing(String),
    /// A bug or an environment failure.
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            NodeError::BadModule(_) | NodeError::Refused(_) | NodeError::RulesFailed(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            NodeError::Moved(_) => StatusCode::MISDIRECTED_REQUEST,
            NodeError::Unavailable(_) | NodeError::Failing(_) => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error a [`NodeError::code`] and message stand for: how an error
    /// crosses from one node to another.
    pub fn from_code(code: &str, message: String) -> NodeError {
        match code {
            "bad_request" => NodeError::BadRequest(message),
            "unauthorized" => NodeError::Unauthorized(message),
            "not_found" => NodeError::NotFound(message),
            "conflict" => NodeError::Conflict(message),
            "too_large" => NodeError::TooLarge(message),
            "bad_module" => NodeError::BadModule(message),
            "refused" => NodeError::Refused(message),
            "rules_failed" => NodeError::RulesFailed(message),
            "moved" => NodeError::Moved(message),
            "unavailable" => NodeError::Unavailable(message),
            _ => NodeError::Internal(message),
        }
    }

    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::BadRequest(_) => "bad_request",
            NodeError::Unauthorized(_) => "unauthorized",
            NodeError::NotFound(_) => "not_found",
            NodeError::Conflict(_) => "conflict",
            NodeError::TooLarge(_) => "too_large",
            NodeError::BadModule(_) => "bad_module",
            NodeError::Refused(_) => "refused",
            NodeError::RulesFailed(_) => "rules_failed",
            NodeError::Moved(_) => "moved",
            NodeError::Unavailable(_) | NodeError::Failing(_) => "unavailable",
            NodeError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } });
        (self.status(), axum::Json(body)).into_response()
    }
}
