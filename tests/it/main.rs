//! pibl's integration tests: the built binary, real backends, real sockets.
//!
//! One test binary, so the crate links once.  Every test runs in its own
//! temporary directory, every server binds port 0 on loopback, and every
//! process a test starts is stopped when the test ends, pass or fail.

mod util;

mod balancing;
mod buffering;
mod cache;
mod compress;
mod config;
mod demo;
mod failures;
mod framing;
mod hostile;
mod layout;
mod logging;
mod processes;
mod service;
mod status;
mod streaming;
mod tls;
mod upgrade;
