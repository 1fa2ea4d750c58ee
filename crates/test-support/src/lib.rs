//! # portcullis-test-support
//!
//! Real parts for end-to-end tests — no mocks: a certificate authority minting certificates at
//! test time ([`pki`]), upstream servers on loopback ([`upstream`]: HTTP/1.1 + h2c echo with
//! special paths, TLS, a gRPC-style h2 server with trailers, a WebSocket echo), a launcher for
//! the real `portcullis` binary ([`gateway`]) and clients ([`client`]).
//!
//! Everything binds 127.0.0.1 with ephemeral ports, so tests run in parallel. Upstreams and
//! async clients need a Tokio runtime (`#[tokio::test]`); [`pki`] and [`gateway`] are
//! synchronous. Helpers panic on failure (this crate is only used by tests) except where a
//! failure is the thing under test ([`send_tls`], [`try_ws_connect`], [`Gateway::start`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

pub mod client;
pub mod gateway;
pub mod idp;
pub mod mmdb;
pub mod pki;
pub mod redis_cluster;
pub mod redis_server;
pub mod upstream;

pub use client::{
    Resp, TlsSeen, WsClient, WsResponse, raw_exchange, raw_http, send, send_h2c, send_tls,
    tls_request, try_ws_connect, ws_connect,
};
pub use gateway::{CliOutput, Gateway, run_cli};
pub use idp::OidcProvider;
pub use pki::{CertFiles, TestPki};
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;
pub use upstream::{
    GrpcUpstream, Recorded, TestUpstream, WsUpgrade, WsUpstream, dead_addr, serve_http1,
};
