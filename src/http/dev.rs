//! `POST /api/v1/dev/token`: a token for whoever names themselves, so the
//! demo page can sign in without an identity provider. Routed only while
//! `auth.dev_tokens` is true, which production refuses. Minting is the
//! demo's sign-in: the user is recorded in the users directory, so others
//! can find their name before their first connection.

use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{handler, IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::State;
use crate::model::UserId;

/// Dev tokens last a day: long enough for a demo, short enough to expire.
const TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
pub struct TokenRequest {
    /// Display name; the user id is derived from it.
    name: String,
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    user_id: String,
    name: String,
}

#[handler]
pub fn token(Data(state): Data<&Arc<State>>, Json(req): Json<TokenRequest>) -> Response {
    let name = req.name.trim();
    let user_id = user_id_of(name);
    if user_id.is_empty() || name.chars().count() > 64 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({
                "code": "INVALID_FRAME",
                "message": "name must be 1 to 64 characters with at least one letter or digit",
            })),
        )
            .into_response();
    }
    match state.auth.mint(&user_id, Some(name), TTL) {
        Ok(token) => {
            // An id too long to verify (lowercasing can lengthen a name)
            // signs nobody in, so it is not recorded either.
            if let Ok(id) = UserId::parse(user_id.as_str()) {
                state.users.seen(&id, Some(name));
            }
            Json(TokenResponse {
                token,
                user_id,
                name: name.to_owned(),
            })
            .into_response()
        }
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "code": "INTERNAL", "message": why })),
        )
            .into_response(),
    }
}

/// The same name gives the same user id, in any tab: lowercase letters and
/// digits, other runs of characters folded into one `-`.
fn user_id_of(name: &str) -> String {
    let mut id = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('-') {
            id.push('-');
        }
    }
    id.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::user_id_of;

    #[test]
    fn user_ids_fold_names() {
        assert_eq!(user_id_of("Alice"), "alice");
        assert_eq!(user_id_of("  Bob  the  Builder! "), "bob-the-builder");
        assert_eq!(user_id_of("Zoë"), "zoë");
        assert_eq!(user_id_of("!!!"), "");
    }
}
