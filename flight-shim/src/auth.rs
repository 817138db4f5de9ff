//! Optional bearer-token authentication, checked on every call by a tonic interceptor.
//!
//! Accepted credentials, when a token is configured: `authorization: Bearer <token>` (what
//! Longbow's client sends with `api_key`), `x-api-key: <token>`, or `authorization: Basic
//! base64(user:<token>)` (pyarrow's `authenticate_basic_token`, answered by Handshake with the
//! bearer header). Comparisons take time independent of where the bytes differ.

use std::sync::Arc;

use base64::Engine;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// The configured token, if any.
#[derive(Clone, Default)]
pub struct Auth {
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("token", &self.token.as_ref().map(|_| "<set>")).finish()
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Authentication with `token`, or none when `None`. An empty token is refused by
    /// [`crate::check_token`] before a server is built; here it would match nothing.
    pub fn new(token: Option<String>) -> Self {
        Auth { token: token.map(Into::into) }
    }

    /// Whether `md` carries the token (always true without one).
    pub fn allows(&self, md: &MetadataMap) -> bool {
        let Some(token) = &self.token else { return true };
        let t = token.as_bytes();
        if let Some(k) = md.get("x-api-key")
            && ct_eq(k.as_bytes(), t)
        {
            return true;
        }
        let Some(h) = md.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        // The scheme is case-insensitive (RFC 7235 section 2.1): Bearer, bearer, BEARER.
        let (scheme, b) = h.split_once(' ').unwrap_or((h, ""));
        if t.is_empty() {
            return false;
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return ct_eq(b.trim().as_bytes(), t);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
                return false;
            };
            let pass = match raw.iter().position(|&c| c == b':') {
                Some(i) => &raw[i + 1..],
                None => &raw[..],
            };
            return ct_eq(pass, t);
        }
        false
    }

    /// The token to hand back from Handshake when the caller authenticated.
    pub fn bearer_for(&self, md: &MetadataMap) -> Option<Arc<str>> {
        self.token.clone().filter(|_| self.allows(md))
    }

    /// The interceptor: refuses calls without the token with `Unauthenticated`.
    ///
    /// # Errors
    /// `Unauthenticated`, saying which headers are accepted.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.allows(req.metadata()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong token: send the header 'authorization: Bearer <token>' (or \
                 'x-api-key: <token>')",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(k: &'static str, v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(k, v.parse().unwrap());
        m
    }

    #[test]
    fn only_the_right_token_in_an_accepted_header_passes() {
        let a = Auth::new(Some("s3cret".into()));
        assert!(a.allows(&md("authorization", "Bearer s3cret")));
        assert!(a.allows(&md("x-api-key", "s3cret")));
        let basic = base64::engine::general_purpose::STANDARD.encode("user:s3cret");
        assert!(a.allows(&md("authorization", &format!("Basic {basic}"))));
        assert!(!a.allows(&md("authorization", "Bearer s3cre")));
        assert!(!a.allows(&md("authorization", "Bearer s3cret2")));
        assert!(!a.allows(&md("authorization", "s3cret")));
        assert!(!a.allows(&MetadataMap::new()));
        assert!(Auth::new(None).allows(&MetadataMap::new()));
        // An empty token matches nothing (and the server refuses to start with one).
        assert!(!Auth::new(Some(String::new())).allows(&MetadataMap::new()));
        assert!(!Auth::new(Some(String::new())).allows(&md("authorization", "Bearer ")));
        assert!(crate::check_token(Some("")).is_err());
        assert!(crate::check_token(Some("  ")).is_err());
        assert!(crate::check_token(Some(" tok")).is_err());
        assert!(crate::check_token(Some("tok")).is_ok() && crate::check_token(None).is_ok());
    }

    #[test]
    fn auth_schemes_are_case_insensitive() {
        let a = Auth::new(Some("t0k".into()));
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert!(a.allows(&md("authorization", &format!("{scheme} t0k"))), "{scheme}");
        }
        let basic = base64::engine::general_purpose::STANDARD.encode("u:t0k");
        assert!(a.allows(&md("authorization", &format!("BASIC {basic}"))));
        assert!(!a.allows(&md("authorization", "Bearert0k")));
        assert!(!a.allows(&md("authorization", "Token t0k")));
    }
}
