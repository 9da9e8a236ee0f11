//! The `cloister-init` binary: see the library's docs.

fn main() {
    cloister_init::main()
}
