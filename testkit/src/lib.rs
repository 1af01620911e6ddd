//! Test support shared by the crates' tests: an in-process fake of the
//! Kubernetes API server, and skips CI can see. A dev-dependency only; nothing in a shipped
//! binary links it.
#![forbid(unsafe_code)]

pub mod fake_api;
pub mod flags;
pub mod patch;
pub mod schema;
pub mod selector;
pub mod skip;
pub mod validate;

pub use fake_api::FakeApi;
