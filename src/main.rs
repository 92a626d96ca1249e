//! The `snapfs` command (see `snapfs::app`).

fn main() -> std::process::ExitCode {
    snapfs::app::main()
}
