//! `meshgov`: the governance engine's command line.
//!
//! Exit codes: 0 success, 1 policy violations or failed tests, 2 usage or
//! I/O errors.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod init;
mod policy_cmds;

/// Policy-as-code governance for a data mesh.
#[derive(Parser)]
#[command(name = "meshgov", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scaffold a policy repository (the example media mesh, commented).
    Init {
        /// Directory to create; must not exist or be empty.
        dir: PathBuf,
    },
    /// Validate a policy repository; lists every problem as path:line:col.
    Check {
        /// The policy repository.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Run the repository's policy tests (tests/*.toml).
    Test {
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// Also write a JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
}

/// A command failure: the message, and the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Usage or I/O errors.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// Policy violations or failed tests.
    pub fn violations(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { dir } => init::run(&dir),
        Command::Check { dir } => policy_cmds::check(&dir),
        Command::Test { dir, junit } => policy_cmds::test(&dir, junit.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("meshgov: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}
