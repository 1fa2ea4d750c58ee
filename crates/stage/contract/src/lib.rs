//! # portcullis-contract
//!
//! The API contract (issue #8): an OpenAPI 3.0/3.1 document defines a route group, and the
//! gateway lets through only what it describes.

#![forbid(unsafe_code)]

pub mod config;
pub mod fields;
pub mod form;
pub mod json;
pub mod messages;
pub mod model;
pub mod openapi;
pub mod params;
pub mod schema;
mod stage;

pub use stage::ContractStage;
