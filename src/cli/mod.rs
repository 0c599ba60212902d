//! One module per subcommand: argument structs and their `run`.

pub mod generate;
pub mod serve;
pub mod wait_ready;
