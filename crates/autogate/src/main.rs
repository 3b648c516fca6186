//! The `autogate` binary: parses the command line and hands over to a role or a client command.
#![forbid(unsafe_code)]

fn main() {}
