//! The integration tests, in one binary: one link step instead of one per file, and one copy
//! of the helpers (`support`). Alone in binaries of their own: `tests/tracing.rs` (tracing's
//! per-process callsite cache) and `tests/build_rerun.rs` (it builds a copy of the crate).

mod support;

mod blocking;
mod contract_prism;
mod errors;
mod hardening;
mod hostile;
mod mock_server;
mod module_cycles;
mod outbox;
mod properties;
mod rate_limits;
mod reliability;
mod retries;
mod retry_decision;
mod schemars;
mod spec_constraints;
mod spec_coverage;
mod spool;
mod spool_edges;
mod spool_shared;
mod tracker;
mod tracker_edges;
mod wire;
