//! The `cloister` binary: a thin shell over [`cloister::run`].

fn main() {
    std::process::exit(cloister::main_with_args(std::env::args_os()));
}
