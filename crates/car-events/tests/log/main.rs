//! car-events integration tests: one binary, one module per concern.

mod crash;
mod disk_full;
mod golden;
mod io_errors;
mod jetstream;
mod model;
