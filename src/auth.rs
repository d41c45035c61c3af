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
use crate::ids::UserId;

/// The claims confab reads. `sub` is the user id; `exp` is required.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
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
    #[error("auth.algorithm `{0}` is not one of HS256, HS384, HS512, RS256, ES256")]
    Algorithm(String),
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
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        let algorithm = match settings.algorithm.to_ascii_uppercase().as_str() {
            "HS256" => Algorithm::HS256,
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(AuthConfigError::Algorithm(settings.algorithm.clone())),
        };
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
        validation.validate_aud = false;
        Ok(Self {
            decoding,
            encoding,
            validation,
            algorithm,
        })
    }

    /// Verifies a token: signature with the configured algorithm, `exp`, `sub`.
    pub fn verify(&self, token: &str) -> Result<Identity, ChatError> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => ChatError::TokenExpired,
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
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(ChatError::AuthFailed(
                "token `sub` must be 1 to 256 bytes".into(),
            ));
        }
        let expires_at = Utc
            .timestamp_opt(claims.exp, 0)
            .single()
            .ok_or_else(|| ChatError::AuthFailed("token `exp` is out of range".into()))?;
        Ok(Identity {
            user_id: UserId(claims.sub),
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
        assert_eq!(id.user_id, UserId("alice".into()));
        assert_eq!(id.name.as_deref(), Some("Alice"));
    }

    #[test]
    fn expired_and_forged_tokens_fail() {
        let a = auth();
        let claims = Claims {
            sub: "bob".into(),
            exp: Utc::now().timestamp() - 3600,
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

    #[test]
    fn unknown_algorithms_are_refused_at_start() {
        let mut s = Settings::embedded().auth;
        s.algorithm = "none".into();
        assert!(Authenticator::new(&s).is_err());
    }
}
