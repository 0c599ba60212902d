//! One module per subcommand: argument structs and their `run`.

pub mod bench;
pub mod generate;
pub mod modelcar;
pub mod pull;
pub mod serve;
pub mod wait_ready;
