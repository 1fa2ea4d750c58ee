//! # portcullis-tokenx
//!
//! An RFC 8693 token exchange endpoint served by the gateway itself (an upstream of
//! `kind: token_exchange`).
//!
//! * **Takes**: a `POST` of an `application/x-www-form-urlencoded` token request — a subject
//!   token (and optionally an actor token) from an issuer trusted for exchange, the audience
//!   wanted (`audience` and/or `resource`), optional `scope` and `requested_token_type` — from
//!   a client that authenticates with `client_secret_basic`, `client_secret_post` or its
//!   verified TLS client certificate.
//! * **Produces**: a short-lived JWT signed with the gateway's internal-token key (served at
//!   the admin API's `/jwks`) for that audience: `sub` of the subject, `client_id` of the
//!   caller, the granted scopes, `act` for delegation; as an RFC 8693 §2.2.1 JSON answer.
//! * **Rejects**: with RFC 6749 §5.2 JSON errors — `invalid_client` (401, `Basic`
//!   challenge), `invalid_request` (also for a subject or actor token that does not verify),
//!   `unsupported_grant_type`, `unsupported_token_type`, `invalid_target`, `invalid_scope`;
//!   `temporarily_unavailable` (503) when tokens cannot be verified right now.
//!
//! Invariants: subject and actor tokens are verified by the gateway's own authenticator
//! ([`portcullis_authn::Authn::verify_token`]) — signature, claims, audience, revocation —
//! restricted to the issuers listed for exchange; scopes granted never exceed what the
//! subject token holds nor what the client is allowed for the audience; an issued token never
//! outlives the subject (or actor) token; a subject token with `may_act` is exchanged only
//! with an actor token it admits; every answer is `Cache-Control: no-store`; tokens and
//! secrets are never logged.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod error;
pub mod exchange;
pub mod form;

pub use config::{RawTokenExchange, TokenExchangeSettings, compile};
pub use error::OAuthError;
pub use exchange::{ACCESS_TOKEN_TYPE, GRANT_TYPE, JWT_TOKEN_TYPE, TokenExchange};
