//! The pibl executable; the program lives in the library (src/lib.rs).

fn main() -> std::process::ExitCode {
    pibl::run()
}
