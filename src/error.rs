//! The one error type of the use cases, and the one place it is mapped to
//! protocol error codes and HTTP statuses.

use poem::http::StatusCode;
use serde::{Deserialize, Serialize};

/// `error.code` of PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    AuthRequired,
    AuthFailed,
    TokenExpired,
    InvalidFrame,
    UnknownType,
    MessageTooLong,
    NotFound,
    Forbidden,
    RateLimited,
    Unavailable,
    ProviderError,
    /// A stream's node went silent (it died or lost the bus).
    Interrupted,
    /// REST only: the route exists, but not with this HTTP method (405).
    MethodNotAllowed,
    /// REST only: the body's `Content-Type` is not one the route takes (415).
    UnsupportedType,
    /// REST only: the body did not arrive within `server.body_timeout_secs` (408).
    RequestTimeout,
    Internal,
}

impl ErrorCode {
    /// The HTTP status a REST call failing with this code answers.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::AuthRequired | ErrorCode::AuthFailed | ErrorCode::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            ErrorCode::InvalidFrame | ErrorCode::UnknownType => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::MessageTooLong => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ProviderError | ErrorCode::Interrupted => StatusCode::BAD_GATEWAY,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::UnsupportedType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code of an HTTP error raised before any handler ran (no route,
    /// wrong method, bad body, missing credentials, body too large); its
    /// status is then `status()` of that code (a 400 becomes a 422).
    pub fn of_status(status: StatusCode) -> ErrorCode {
        match status {
            StatusCode::UNAUTHORIZED => ErrorCode::AuthRequired,
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::MessageTooLong,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedType,
            StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
            s if s.is_server_error() => ErrorCode::Internal,
            _ => ErrorCode::InvalidFrame,
        }
    }
}

/// Everything a request can fail with, whether it came by socket or REST.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    AuthRequired(String),
    #[error("{0}")]
    AuthFailed(String),
    #[error("token expired")]
    TokenExpired,
    #[error("{0}")]
    InvalidFrame(String),
    #[error("unknown frame type `{0}`")]
    UnknownType(String),
    #[error("message is {len} characters; the limit is {max}")]
    MessageTooLong { len: usize, max: usize },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limited; retry in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    #[error("{0}; nothing was stored, retry")]
    Unavailable(String),
    #[error("{0}")]
    Provider(String),
    #[error("internal error")]
    Internal(String),
}

impl ChatError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::AuthRequired(_) => ErrorCode::AuthRequired,
            ChatError::AuthFailed(_) => ErrorCode::AuthFailed,
            ChatError::TokenExpired => ErrorCode::TokenExpired,
            ChatError::InvalidFrame(_) => ErrorCode::InvalidFrame,
            ChatError::UnknownType(_) => ErrorCode::UnknownType,
            ChatError::MessageTooLong { .. } => ErrorCode::MessageTooLong,
            ChatError::NotFound(_) => ErrorCode::NotFound,
            ChatError::Forbidden(_) => ErrorCode::Forbidden,
            ChatError::RateLimited { .. } => ErrorCode::RateLimited,
            ChatError::Unavailable(_) => ErrorCode::Unavailable,
            ChatError::Provider(_) => ErrorCode::ProviderError,
            ChatError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ChatError::RateLimited { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The text a client sees. Internal details stay in the logs.
    pub fn client_message(&self) -> String {
        self.to_string()
    }
}

impl From<sea_orm::DbErr> for ChatError {
    fn from(err: sea_orm::DbErr) -> Self {
        tracing::warn!(error = %err, "storage error");
        ChatError::Unavailable("storage unavailable".into())
    }
}

/// The log's rules refusing a change.
impl From<crate::model::Refusal> for ChatError {
    fn from(refusal: crate::model::Refusal) -> Self {
        use crate::model::Refusal;
        match refusal {
            Refusal::NotFound(what) => ChatError::NotFound(what),
            Refusal::Forbidden(why) => ChatError::Forbidden(why.into()),
            Refusal::Archived => ChatError::Forbidden(refusal.to_string()),
            Refusal::TooManyReactions { .. } => ChatError::InvalidFrame(refusal.to_string()),
        }
    }
}

impl From<crate::bus::BusError> for ChatError {
    fn from(err: crate::bus::BusError) -> Self {
        tracing::warn!(error = %err, "bus error");
        ChatError::Unavailable("event bus unavailable".into())
    }
}
