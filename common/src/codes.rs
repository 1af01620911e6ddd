//! Errors to gRPC status: every error type that can reach a client names its
//! code, and the message carries the whole source chain (so stderr of a
//! failed tool reaches the operator).

use std::error::Error;
use tonic::{Code, Status};

/// The gRPC code an error maps to. Pick it for what the caller will do:
/// ABORTED / UNAVAILABLE / DEADLINE_EXCEEDED retry, RESOURCE_EXHAUSTED tries
/// elsewhere, anything else is final.
pub trait GrpcCode {
    fn grpc_code(&self) -> Code;
}

/// "a: b: c" — the error and all of its sources.
pub fn full_message(e: &dyn Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    msg
}

/// Converts an error into a `Status` with its code and full message.
pub fn status_from<E: GrpcCode + Error>(e: E) -> Status {
    Status::new(e.grpc_code(), full_message(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create volume {name}")]
    struct Outer {
        name: String,
        #[source]
        source: std::io::Error,
    }

    impl GrpcCode for Outer {
        fn grpc_code(&self) -> Code {
            Code::Internal
        }
    }

    #[test]
    fn status_carries_code_and_source_chain() {
        let e = Outer {
            name: "v1".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let s = status_from(e);
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "failed to create volume v1: disk on fire");
    }
}
