//! One module per probe family.
pub mod logs;
pub mod process;
pub mod runtime;
pub mod tcp;
pub mod tls;
