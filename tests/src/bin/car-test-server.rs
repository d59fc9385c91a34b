//! `car-test-server`: the `car-server` command line, built inside the test package so the
//! end-to-end tests can run the real daemon as a separate process
//! (`env!("CARGO_BIN_EXE_car-test-server")`) and signal it.

fn main() -> std::process::ExitCode {
    car_gateway::cli::main()
}
