//! JWT verification (the first frame of every socket, the Bearer header of
//! every REST call) and dev-token minting for `confab token`.
//!
//! The algorithm comes from configuration only, never from the token header:
//! a token signed with anything else (including `none`) is refused.

use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::error::ChatError;
use crate::model::UserId;

/// The claims confab reads. `sub` is the user id; `exp` is required;
/// `nbf` and `iat`, when present, must not lie in the future.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Who a verified token speaks for, and until when.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub user_id: UserId,
    pub name: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// Why the auth settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.algorithm `{0:?}` is not one of HS256, HS384, HS512, RS256, ES256")]
    Algorithm(Algorithm),
    #[error("auth.public_key_pem is not a valid {alg} public key: {err}")]
    Key { alg: &'static str, err: String },
}

/// Verifies tokens with the configured key and algorithm.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    algorithm: Algorithm,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    leeway: u64,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        let algorithm = settings.algorithm;
        if !matches!(
            algorithm,
            Algorithm::HS256
                | Algorithm::HS384
                | Algorithm::HS512
                | Algorithm::RS256
                | Algorithm::ES256
        ) {
            return Err(AuthConfigError::Algorithm(algorithm));
        }
        let pem = settings.public_key_pem.as_bytes();
        let (decoding, encoding) = match algorithm {
            Algorithm::RS256 => (
                DecodingKey::from_rsa_pem(pem).map_err(|e| AuthConfigError::Key {
                    alg: "RS256",
                    err: e.to_string(),
                })?,
                None,
            ),
            Algorithm::ES256 => (
                DecodingKey::from_ec_pem(pem).map_err(|e| AuthConfigError::Key {
                    alg: "ES256",
                    err: e.to_string(),
                })?,
                None,
            ),
            _ => {
                let secret = settings.jwt_secret.as_bytes();
                (
                    DecodingKey::from_secret(secret),
                    Some(EncodingKey::from_secret(secret)),
                )
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = settings.leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Ok(Self {
            decoding,
            encoding,
            validation,
            algorithm,
            leeway: settings.leeway_secs,
        })
    }

    /// Verifies the credentials of a REST call: the `Authorization` header
    /// must be `Bearer`, one space, then the token, which `verify` checks.
    /// A missing header or another scheme is `AUTH_REQUIRED`.
    ///
    /// RFC 6750 allows several spaces after `Bearer`; confab takes exactly
    /// one, so that the token is the rest of the header as it is the whole
    /// `token` of a socket's `auth` frame, and a token padded with spaces is
    /// refused on both. (Whitespace after the value is not part of a header,
    /// RFC 9110 section 5.5: HTTP drops it before it gets here.)
    pub fn verify_header(&self, authorization: Option<&[u8]>) -> Result<Identity, ChatError> {
        const SCHEME: &[u8] = b"Bearer ";
        let required = || ChatError::AuthRequired("send `Authorization: Bearer <JWT>`".into());
        let value = authorization.ok_or_else(required)?;
        if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
            return Err(required());
        }
        let token = std::str::from_utf8(&value[SCHEME.len()..])
            .map_err(|_| ChatError::AuthFailed("invalid token".into()))?;
        self.verify(token)
    }

    /// Verifies a token, from a socket's `auth` frame or a REST header: the
    /// JWT compact form exactly (no whitespace anywhere), signed with the
    /// configured algorithm, with `sub` and an unexpired `exp`, and with no
    /// `nbf` or `iat` later than now (all three within `leeway_secs`).
    pub fn verify(&self, token: &str) -> Result<Identity, ChatError> {
        if token.chars().any(char::is_whitespace) {
            return Err(ChatError::AuthFailed(
                "token must not contain whitespace".into(),
            ));
        }
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => ChatError::TokenExpired,
                    ErrorKind::ImmatureSignature => {
                        ChatError::AuthFailed("token not valid yet".into())
                    }
                    ErrorKind::InvalidAlgorithm => {
                        ChatError::AuthFailed("token algorithm is not the configured one".into())
                    }
                    ErrorKind::InvalidSignature => {
                        ChatError::AuthFailed("bad token signature".into())
                    }
                    ErrorKind::MissingRequiredClaim(c) => {
                        ChatError::AuthFailed(format!("token lacks the `{c}` claim"))
                    }
                    _ => ChatError::AuthFailed("invalid token".into()),
                }
            })?;
        let claims = data.claims;
        let latest = Utc::now().timestamp().saturating_add_unsigned(self.leeway);
        if claims.iat.is_some_and(|iat| iat > latest) {
            return Err(ChatError::AuthFailed("token issued in the future".into()));
        }
        let user_id = UserId::parse(claims.sub)
            .map_err(|_| ChatError::AuthFailed("token `sub` must be 1 to 256 bytes".into()))?;
        let expires_at = Utc
            .timestamp_opt(claims.exp, 0)
            .single()
            .ok_or_else(|| ChatError::AuthFailed("token `exp` is out of range".into()))?;
        Ok(Identity {
            user_id,
            name: claims.name,
            expires_at,
        })
    }

    /// Signs a token for `user` valid for `ttl` (shared-secret algorithms only).
    pub fn mint(
        &self,
        user: &str,
        name: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<String, String> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            "minting needs a shared-secret algorithm (HS256); with RS256/ES256 tokens come from your identity provider".to_string()
        })?;
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_owned(),
            exp: now + ttl.as_secs() as i64,
            nbf: None,
            iat: Some(now),
            name: name.map(str::to_owned),
        };
        encode(&Header::new(self.algorithm), &claims, key).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::time::Duration;

    fn auth() -> Authenticator {
        Authenticator::new(&Settings::embedded().auth).unwrap()
    }

    #[test]
    fn minted_tokens_verify() {
        let a = auth();
        let t = a
            .mint("alice", Some("Alice"), Duration::from_secs(60))
            .unwrap();
        let id = a.verify(&t).unwrap();
        assert_eq!(id.user_id, UserId::parse("alice").unwrap());
        assert_eq!(id.name.as_deref(), Some("Alice"));
    }

    #[test]
    fn expired_and_forged_tokens_fail() {
        let a = auth();
        let claims = Claims {
            sub: "bob".into(),
            exp: Utc::now().timestamp() - 3600,
            nbf: None,
            iat: None,
            name: None,
        };
        let secret = EncodingKey::from_secret(Settings::embedded().auth.jwt_secret.as_bytes());
        let expired = encode(&Header::new(Algorithm::HS256), &claims, &secret).unwrap();
        assert!(matches!(a.verify(&expired), Err(ChatError::TokenExpired)));

        let claims = Claims {
            exp: Utc::now().timestamp() + 3600,
            ..claims
        };
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"some-other-secret-entirely"),
        )
        .unwrap();
        assert!(matches!(a.verify(&forged), Err(ChatError::AuthFailed(_))));

        let other_alg = encode(&Header::new(Algorithm::HS512), &claims, &secret).unwrap();
        assert!(matches!(
            a.verify(&other_alg),
            Err(ChatError::AuthFailed(_))
        ));
    }

    #[test]
    fn unsigned_tokens_fail() {
        // {"alg":"none","typ":"JWT"} . {"sub":"eve","exp":9999999999} . (empty)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJldmUiLCJleHAiOjk5OTk5OTk5OTl9.";
        assert!(matches!(auth().verify(none), Err(ChatError::AuthFailed(_))));
    }

    #[test]
    fn tokens_without_exp_fail() {
        #[derive(Serialize)]
        struct NoExp {
            sub: String,
        }
        let secret = EncodingKey::from_secret(Settings::embedded().auth.jwt_secret.as_bytes());
        let t = encode(
            &Header::new(Algorithm::HS256),
            &NoExp { sub: "x".into() },
            &secret,
        )
        .unwrap();
        assert!(matches!(auth().verify(&t), Err(ChatError::AuthFailed(_))));
    }

    /// Signs `claims` with the embedded dev secret.
    fn sign(claims: serde_json::Value) -> String {
        let secret = EncodingKey::from_secret(Settings::embedded().auth.jwt_secret.as_bytes());
        encode(&Header::new(Algorithm::HS256), &claims, &secret).unwrap()
    }

    fn failure(result: Result<Identity, ChatError>) -> String {
        match result {
            Err(ChatError::AuthFailed(why)) => why,
            other => panic!("expected AUTH_FAILED, got {other:?}"),
        }
    }

    #[test]
    fn tokens_not_valid_yet_fail_beyond_the_leeway() {
        let a = auth();
        let leeway = Settings::embedded().auth.leeway_secs as i64;
        let now = Utc::now().timestamp();
        let later = sign(serde_json::json!({"sub": "x", "exp": now + 7200, "nbf": now + 3600}));
        assert_eq!(failure(a.verify(&later)), "token not valid yet");
        let within =
            sign(serde_json::json!({"sub": "x", "exp": now + 7200, "nbf": now + leeway / 2}));
        assert!(a.verify(&within).is_ok());
        let past = sign(serde_json::json!({"sub": "x", "exp": now + 7200, "nbf": now - 60}));
        assert!(a.verify(&past).is_ok());
    }

    #[test]
    fn tokens_issued_in_the_future_fail_beyond_the_leeway() {
        let a = auth();
        let leeway = Settings::embedded().auth.leeway_secs as i64;
        let now = Utc::now().timestamp();
        let later = sign(serde_json::json!({"sub": "x", "exp": now + 7200, "iat": now + 3600}));
        assert_eq!(failure(a.verify(&later)), "token issued in the future");
        let within =
            sign(serde_json::json!({"sub": "x", "exp": now + 7200, "iat": now + leeway / 2}));
        assert!(a.verify(&within).is_ok());
    }

    #[test]
    fn tokens_with_whitespace_fail() {
        let a = auth();
        let t = a.mint("alice", None, Duration::from_secs(60)).unwrap();
        for padded in [
            format!(" {t}"),
            format!("{t} "),
            format!("{t}\n"),
            t.replacen('.', ". ", 1),
        ] {
            assert_eq!(
                failure(a.verify(&padded)),
                "token must not contain whitespace"
            );
        }
    }

    #[test]
    fn the_header_is_bearer_one_space_and_the_token() {
        let a = auth();
        let t = a.mint("alice", None, Duration::from_secs(60)).unwrap();
        for ok in [
            format!("Bearer {t}"),
            format!("bearer {t}"),
            format!("BEARER {t}"),
        ] {
            assert_eq!(
                a.verify_header(Some(ok.as_bytes())).unwrap().user_id,
                UserId::parse("alice").unwrap()
            );
        }
        for missing in [
            None,
            Some("Basic YTpi"),
            Some("Bearer"),
            Some("Bearer "),
            Some(t.as_str()),
        ] {
            assert!(
                matches!(
                    a.verify_header(missing.map(str::as_bytes)),
                    Err(ChatError::AuthRequired(_))
                ),
                "{missing:?}"
            );
        }
        let padded = format!("Bearer  {t}");
        assert_eq!(
            failure(a.verify_header(Some(padded.as_bytes()))),
            "token must not contain whitespace"
        );
    }

    #[test]
    fn unsupported_algorithms_are_refused_at_start() {
        let mut s = Settings::embedded().auth;
        s.algorithm = Algorithm::PS256;
        assert!(Authenticator::new(&s).is_err());
    }
}
