//! `car-server`: the car daemon. See [`car_gateway::cli`].

fn main() -> std::process::ExitCode {
    car_gateway::cli::main()
}
