//! The integration tests of `car-replay`: the built binary, run on fixture logs, judged by
//! its parsed `--json` output, its exit codes and its messages. One test binary, one
//! module per area.

mod agents;
mod chats;
mod cluster;
mod daemon;
mod damage;
mod fixtures;
mod golden;
mod memory;
mod run_control;
