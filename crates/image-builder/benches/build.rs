//! Build benchmark (see the crate docs).
fn main() {}
