//! car-events integration tests: one binary, one module per concern.

mod crash;
mod golden;
mod io_errors;
mod model;
