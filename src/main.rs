use std::process::ExitCode;

fn main() -> ExitCode {
    pipe::cli::main(pipe_engine::spec::KindRegistry::new(pipe::stages::registry()))
}
