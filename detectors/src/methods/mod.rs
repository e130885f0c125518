//! Training methods (methods.md sections 2-6). `spec` is the registry the protocol layer
//! validates against; the implementations live beside it.
pub mod spec;

pub use spec::{registry, MethodSpec, ParamKind, ParamSpec};
