//! `meshgov`: the governance engine's command line.
//!
//! Exit codes: 0 success, 1 policy violations or failed tests, 2 usage or
//! I/O errors.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod bundle_cmds;
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
    /// Create an Ed25519 signing key pair: OUT (PKCS#8 PEM, mode 0600) and OUT.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Check, compile and sign a bundle (whole mesh, or sliced for one product).
    Build {
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// The signing key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the DSSE envelope.
        #[arg(long, default_value = "bundle.dsse.json")]
        out: PathBuf,
        /// Slice the bundle for one product (`domain/name`).
        #[arg(long)]
        product: Option<String>,
        /// The revision; default: the git commit count, else the build time.
        #[arg(long)]
        revision: Option<u64>,
        /// The build time (RFC 3339); default: SOURCE_DATE_EPOCH, else now.
        #[arg(long)]
        created_at: Option<String>,
    },
    /// Work with built bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Show a bundle's manifest and whether it verifies against trusted keys.
    Inspect {
        file: PathBuf,
        /// A trusted public key file (repeat for several, e.g. during rotation).
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
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
        Command::Keygen { out, force } => bundle_cmds::keygen(&out, force),
        Command::Build {
            dir,
            key,
            out,
            product,
            revision,
            created_at,
        } => bundle_cmds::build(bundle_cmds::BuildArgs {
            dir: &dir,
            key: &key,
            out: &out,
            product: product.as_deref(),
            revision,
            created_at: created_at.as_deref(),
        }),
        Command::Bundle {
            command: BundleCommand::Inspect { file, trust, json },
        } => bundle_cmds::inspect(&file, &trust, json),
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
