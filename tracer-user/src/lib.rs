//! tracer: eBPF tracing of running Node.js processes.
//!
//! Data flow (docs/architecture.md): probes (tracer-ebpf) -> ring buffer ->
//! [`capture::ring`] reader -> [`decode`] -> [`pipeline`] (lines, clock,
//! names) -> [`runner`] -> a front end's sink ([`attach`]).

pub mod agent;
pub mod aggregator;
pub mod attach;
pub mod capture;
pub mod client_tls;
pub mod conns;
pub mod control;
pub mod decode;
pub mod demo;
pub mod event;
pub mod forward;
pub mod http;
pub mod inspector;
pub mod lines;
pub mod metrics;
pub mod options;
pub mod output;
pub mod pipeline;
pub mod probe;
pub mod progress;
pub mod reassembly;
pub mod retransmits;
pub mod runner;
pub mod verify;
