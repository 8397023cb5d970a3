//! `meshgov`: the governance engine's command line.
//!
//! Exit codes: 0 success, 1 policy violations or failed tests, 2 usage or
//! I/O errors, 141 output cut off (stdout closed by its reader, as with
//! `| head`).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `println!` for command output; see [`write_stdout`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output; see [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` for messages and errors: when stderr cannot be written (a
/// full disk under the log file) the message is lost, where `eprintln!`
/// would panic.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The exit code when stdout's reader has gone: what a shell reports for a
/// command killed by SIGPIPE.
const EXIT_BROKEN_PIPE: i32 = 141;

/// Writes command output. `println!` panics when stdout cannot be written;
/// here a reader that has gone (`meshgov audit show … | head`) ends the
/// process quietly with [`EXIT_BROKEN_PIPE`], and any other failure (a full
/// disk) with a one-line error and exit code 2.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        errln!("meshgov: cannot write the output: {e}");
        std::process::exit(2);
    }
}

mod audit_cmds;
mod bundle_cmds;
mod conformance;
mod demo;
mod diff_cmd;
mod emit_config;
mod fleet_cmds;
mod init;
mod inject;
mod policy_cmds;
mod token_cmd;
mod webhook_cmd;

/// Policy-as-code governance for a data mesh.
#[derive(Parser)]
#[command(name = "meshgov", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the example media mesh on this machine and take a tour of it.
    ///
    /// Writes the example policy repository, fresh keys and seeded sample
    /// data to a work directory, starts the engine and one sidecar per
    /// product on 127.0.0.1, rolls out the bundle, then shows: one port read
    /// by three consumers (masked, revealed, refused), the plays (kept as
    /// Parquet) read as Arrow by projection and filter, a differentially
    /// private aggregate and its budget, a policy edit rolled out live, and
    /// the audit logs verifying. The mesh then keeps running, with its URLs
    /// printed, until Ctrl-C.
    ///
    /// Examples:
    ///   meshgov demo
    ///   meshgov demo --rows 100000 --keep
    ///   meshgov demo --no-tour --engine-port 7600
    #[command(verbatim_doc_comment)]
    Demo(demo::DemoArgs),
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
    /// Create an Ed25519 signing key pair: OUT (PKCS#8 PEM, mode 0600) and OUT.pub (SPKI PEM).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Check, test, compile and sign a bundle (whole mesh, or sliced for one product).
    ///
    /// The same build as `meshgov serve`'s: the repository must check, and
    /// its policy tests (tests/*.toml) must pass, or nothing is written and
    /// the exit code is 1 (failing tests are printed as `meshgov test` prints
    /// them). --skip-tests builds without running the tests.
    ///
    /// Examples:
    ///   meshgov build policies --key keys/guild --out bundle.dsse.json
    ///   meshgov build policies --key keys/guild --out profiles.dsse.json --product users/user-profiles
    #[command(verbatim_doc_comment)]
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
        /// The revision; default: the build time in Unix seconds.
        #[arg(long)]
        revision: Option<u64>,
        /// The build time (RFC 3339); default: SOURCE_DATE_EPOCH, else now.
        #[arg(long)]
        created_at: Option<String>,
        /// Build without running the repository's policy tests.
        #[arg(long)]
        skip_tests: bool,
    },
    /// Product CI: check a product descriptor against the mesh's rules.
    Conformance {
        #[command(subcommand)]
        command: ConformanceCommand,
    },
    /// The impact of a policy change: test decisions that flip, field
    /// treatments per group and purpose, row filters and privacy settings.
    ///
    /// OLD and NEW are policy directories, or git revisions of the repository
    /// at --repo. Exits 1 when any change widens access, so CI can require
    /// review.
    ///
    /// Examples:
    ///   meshgov diff policies-before policies
    ///   meshgov diff --repo policies HEAD~1 HEAD
    #[command(verbatim_doc_comment)]
    Diff {
        old: String,
        new: String,
        /// The policy repository (or a directory inside a git repository) for revisions.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the authoring service: watch the policy repository, and for each
    /// change check, test, build and sign the next revision, then push it to
    /// every registered sidecar.
    ///
    /// A change in a git repository is a new commit; in a plain directory,
    /// any changed file. A change that fails check or test is not rolled out;
    /// the failure shows in `meshgov status`, on the fleet page and in the
    /// log. Bundles are re-signed as a new revision at half their lifetime.
    ///
    /// Sidecars register with `meshgov-sidecar --engine http://ADDR`. The
    /// fleet is at `GET /v1/fleet` and, for people, at `/`.
    ///
    /// Example:
    ///   meshgov serve --policies ./policies --key keys/guild --listen 127.0.0.1:7600 --canary 10%
    #[command(verbatim_doc_comment)]
    Serve(fleet_cmds::ServeArgs),
    /// Show the fleet: each sidecar's product, ACKed revision, last contact,
    /// last error and bundle age, and the rollout's state.
    Status {
        /// The engine (`meshgov serve`) URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        engine: String,
        /// Print the engine's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Push a signed bundle to one sidecar's control port and print its ACK or NACK.
    Push {
        /// The bundle (DSSE envelope) to push.
        file: PathBuf,
        /// The sidecar's control URL, e.g. http://127.0.0.1:8081.
        #[arg(long)]
        sidecar: String,
    },
    /// Add the meshgov sidecar to Kubernetes workloads (Deployment,
    /// StatefulSet, Job, CronJob) and print the manifest.
    ///
    /// Other documents are printed byte for byte; running inject on its own
    /// output changes nothing. The product comes from --product or each
    /// workload's `meshgov.io/product` annotation; objects annotated
    /// `meshgov.io/inject: disabled` are left alone. Exit 2, with nothing
    /// printed, when a document is malformed or cannot be injected.
    ///
    /// Examples:
    ///   meshgov inject -f deploy.yaml --product users/user-profiles --engine http://meshgov-engine:7600 | kubectl apply -f -
    ///   helm template charts/profiles | meshgov inject -f - > injected.yaml
    #[command(verbatim_doc_comment)]
    Inject(inject::InjectArgs),
    /// Mint a short-lived control token (for `GET /control/v1/status` on a sidecar).
    ///
    /// Example:
    ///   curl -H "Authorization: Bearer $(meshgov control-token --key keys/guild)" http://127.0.0.1:8081/control/v1/status
    #[command(verbatim_doc_comment)]
    ControlToken {
        /// The governance signing key the sidecar trusts.
        #[arg(long)]
        key: PathBuf,
        /// Lifetime in seconds (at most 600).
        #[arg(long, default_value_t = 300)]
        ttl: u64,
    },
    /// Check and read a sidecar's audit log (a directory of segments, or one file).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Work with built bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Mint a consumer JWT for local use and demos (a development aid, not an IdP).
    ///
    /// Prints the token on stdout, and on stderr the sidecar `[[auth.keys]]`
    /// entry that verifies it (for EdDSA keys). Claims: iss, aud, sub,
    /// groups, purpose, iat, nbf, exp.
    ///
    /// Example:
    ///   meshgov keygen --out dev-idp
    ///   TOKEN=$(meshgov token --key dev-idp --sub alice --groups marketing --purpose campaign-analytics)
    ///   curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/v1/ports/profiles/records
    #[command(verbatim_doc_comment)]
    Token {
        /// The private signing key: Ed25519 PKCS#8 PEM (what `meshgov keygen` writes)
        /// for EdDSA, P-256 PKCS#8 PEM for ES256, RSA PEM for RS256.
        #[arg(long)]
        key: PathBuf,
        /// The subject (consumer id).
        #[arg(long)]
        sub: String,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The purpose of use; must be one the mesh declares.
        #[arg(long)]
        purpose: String,
        /// Lifetime in seconds (at most a week).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[command(flatten)]
        issuer: meshgov_conformance::token::Issuer,
    },
}

// Parsed once per process; boxing `Run` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ConformanceCommand {
    /// Run every static rule on a product descriptor (rules: conformance/RULES.md).
    ///
    /// Exit codes: 0 pass, 1 findings at or above --fail-on, 2 usage or I/O error.
    ///
    /// Examples:
    ///   meshgov conformance check product.yaml --policies ../governance/policies
    ///   meshgov conformance check product.yaml --bundle bundle.dsse.json --trust guild.pub
    ///   meshgov conformance check product.yaml --policies p --previous product.v1.yaml --format sarif
    ///   meshgov conformance check product.yaml --policies p --format sarif \
    ///     --help-base-url https://git.example/meshgov/blob/main/conformance/RULES.md
    #[command(verbatim_doc_comment)]
    Check {
        /// The product descriptor (ODCS v3 YAML).
        descriptor: PathBuf,
        /// A policy repository to check against.
        #[arg(long, conflicts_with = "bundle")]
        policies: Option<PathBuf>,
        /// A signed bundle to check against (with --trust).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// A trusted public key file for --bundle: PEM `PUBLIC KEY` or `ed25519:<base64>` (repeatable).
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// The previous version of the descriptor: adds the evolution rules.
        #[arg(long)]
        previous: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: meshgov_conformance::report::Format,
        /// The lowest severity that fails the run.
        #[arg(long, value_enum, default_value = "error")]
        fail_on: meshgov_conformance::report::FailOn,
        /// The absolute address of conformance/RULES.md; SARIF's helpUri for
        /// each rule is this address with the rule's anchor.
        #[arg(long, value_name = "URL", default_value = meshgov_conformance::rules::DEFAULT_HELP_BASE_URL, value_parser = conformance::help_base_url)]
        help_base_url: String,
    },
    /// Black-box suite against a live sidecar (rules LIVE-*: conformance/RULES.md).
    ///
    /// Takes the bundle in force from the control port as the reference,
    /// reads every port as every consumer the policies name (and --consumer),
    /// tries bad tokens, spends a throwaway consumer's privacy budget, pushes
    /// tampered, untrusted, rolled-back and expired bundles, and checks that
    /// every request is in the audit stream and that the chain verifies.
    /// When the sidecar has a PostgreSQL port, it does the same over SQL:
    /// bad passwords, every consumer's tables against their HTTP reads,
    /// aggregate-only consumers and the budget (--skip-sql leaves it out).
    /// Run it against a staging sidecar: the budget checks spend budget.
    ///
    /// Exit codes: 0 pass, 1 findings at or above --fail-on, 2 usage or I/O error.
    ///
    /// Example:
    ///   meshgov conformance run --sidecar http://127.0.0.1:8080 --control http://127.0.0.1:8081 \
    ///     --product product.yaml --issuer-key idp.pem --governance-key keys/guild --format junit
    #[command(verbatim_doc_comment)]
    Run {
        /// The sidecar's data port URL.
        #[arg(long)]
        sidecar: String,
        /// The sidecar's control port URL.
        #[arg(long)]
        control: String,
        /// The product descriptor the sidecar serves.
        #[arg(long)]
        product: PathBuf,
        /// The private key of a token issuer the sidecar trusts (signs consumer tokens).
        #[arg(long)]
        issuer_key: PathBuf,
        #[command(flatten)]
        issuer: meshgov_conformance::token::Issuer,
        /// A control token (`meshgov control-token`) for the control port.
        #[arg(long, env = "MESHGOV_CONTROL_TOKEN", hide_env_values = true)]
        control_token: Option<String>,
        /// The governance signing key: mints the control token, and signs the
        /// rolled-back and expired bundles (without it those checks do not run).
        #[arg(long)]
        governance_key: Option<PathBuf>,
        /// A trusted governance public key file (PEM or `ed25519:<base64>`), to verify the bundle in force (repeatable).
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// Also read as this consumer: SUB:GROUP,GROUP:PURPOSE (repeatable).
        #[arg(long)]
        consumer: Vec<String>,
        /// Records per read.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Leave out the privacy-budget checks (they spend budget), over HTTP and SQL.
        #[arg(long)]
        skip_budget: bool,
        /// Leave out the SQL checks (LIVE-012 to LIVE-015), which run when the
        /// sidecar's discovery document names a PostgreSQL port.
        #[arg(long)]
        skip_sql: bool,
        /// Connect to the PostgreSQL port at HOST:PORT instead of the address
        /// discovery gives (a port forward, a load balancer).
        #[arg(long, value_name = "HOST:PORT")]
        sql_address: Option<String>,
        /// CA certificates (PEM) to trust for a TLS SQL port, besides the platform's roots.
        #[arg(long, value_name = "PEM")]
        sql_ca: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: meshgov_conformance::report::Format,
        /// The lowest severity that fails the run.
        #[arg(long, value_enum, default_value = "error")]
        fail_on: meshgov_conformance::report::FailOn,
        /// The absolute address of conformance/RULES.md; SARIF's helpUri for
        /// each rule is this address with the rule's anchor.
        #[arg(long, value_name = "URL", default_value = meshgov_conformance::rules::DEFAULT_HELP_BASE_URL, value_parser = conformance::help_base_url)]
        help_base_url: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and the signed checkpoints.
    ///
    /// Exits 0 with a summary, or 1 naming the first bad sequence and the
    /// kind of break: edited, reordered, deleted, truncated (events a signed
    /// checkpoint vouches for are missing) or bad signature. Exit 2: the log
    /// or key cannot be read.
    ///
    /// Example:
    ///   meshgov audit verify state/audit --key state/audit-signing.pub
    #[command(verbatim_doc_comment)]
    Verify {
        /// The audit directory (`<state_dir>/audit`, or a collected store) or one segment file.
        path: PathBuf,
        /// The sidecar's checkpoint key (`ed25519:<base64>`, its `audit-signing.pub`).
        #[arg(long)]
        key: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List events, filtered; a read's completion event follows its decision.
    ///
    /// Example:
    ///   meshgov audit show state/audit --consumer mia --decision deny --since 2026-11-21T00:00:00Z
    #[command(verbatim_doc_comment)]
    Show {
        /// The audit directory or one segment file.
        path: PathBuf,
        #[arg(long)]
        consumer: Option<String>,
        #[arg(long)]
        port: Option<String>,
        /// allow, deny or error.
        #[arg(long)]
        decision: Option<String>,
        /// The sidecar's request id (the `x-request-id` it answered with).
        #[arg(long)]
        request_id: Option<String>,
        /// The `x-request-id` the client sent (answered as `x-client-request-id`).
        #[arg(long)]
        client_request_id: Option<String>,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only events at or before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Print the stored events (NDJSON) instead of rows.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Show a bundle's manifest and whether it verifies against trusted keys.
    Inspect {
        file: PathBuf,
        /// A trusted public key file: PEM `PUBLIC KEY` (`meshgov keygen`'s .pub,
        /// `openssl pkey -pubout`) or `ed25519:<base64>`. Repeat for several,
        /// e.g. during rotation.
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A command failure: the message, and the exit code it maps to.
#[derive(Debug)]
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

    /// A file or directory that cannot be read or written, in words.
    pub fn io(path: &std::path::Path, e: &std::io::Error) -> Failure {
        Failure::usage(meshgov_core::diag::io_message(path.display(), e))
    }

    /// A key file that cannot be read, or holds no usable key.
    pub fn key(e: meshgov_bundle::KeyFileError) -> Failure {
        match e {
            meshgov_bundle::KeyFileError::Io { path, source } => Failure::io(&path, &source),
            e => Failure::usage(e.to_string()),
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

impl From<meshgov_conformance::Failure> for Failure {
    fn from(f: meshgov_conformance::Failure) -> Failure {
        match f {
            meshgov_conformance::Failure::Usage(m) => Failure::usage(m),
            meshgov_conformance::Failure::Violations(m) => Failure::violations(m),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
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
            skip_tests,
        } => bundle_cmds::build(bundle_cmds::BuildArgs {
            dir: &dir,
            key: &key,
            out: &out,
            product: product.as_deref(),
            revision,
            created_at: created_at.as_deref(),
            skip_tests,
        }),
        Command::Conformance {
            command:
                ConformanceCommand::Check {
                    descriptor,
                    policies,
                    bundle,
                    trust,
                    previous,
                    format,
                    fail_on,
                    help_base_url,
                },
        } => conformance::check(
            meshgov_conformance::check::CheckArgs {
                descriptor: &descriptor,
                policies: policies.as_deref(),
                bundle: bundle.as_deref(),
                trust: &trust,
                previous: previous.as_deref(),
            },
            format,
            fail_on,
            help_base_url,
        ),
        Command::Conformance {
            command:
                ConformanceCommand::Run {
                    sidecar,
                    control,
                    product,
                    issuer_key,
                    issuer,
                    control_token,
                    governance_key,
                    trust,
                    consumer,
                    limit,
                    skip_budget,
                    skip_sql,
                    sql_address,
                    sql_ca,
                    format,
                    fail_on,
                    help_base_url,
                },
        } => conformance::run(
            &meshgov_conformance::live::RunArgs {
                sidecar: &sidecar,
                control: &control,
                product: &product,
                issuer_key: &issuer_key,
                issuer: &issuer,
                control_token: control_token.as_deref(),
                governance_key: governance_key.as_deref(),
                trust: &trust,
                consumers: &consumer,
                limit,
                skip_budget,
                skip_sql,
                sql_address: sql_address.as_deref(),
                sql_ca: sql_ca.as_deref(),
            },
            format,
            fail_on,
            help_base_url,
        ),
        Command::Diff {
            old,
            new,
            repo,
            json,
        } => diff_cmd::run(&old, &new, &repo, json),
        Command::Serve(args) => fleet_cmds::serve(args),
        Command::Status { engine, json } => fleet_cmds::status(&engine, json),
        Command::Push { file, sidecar } => fleet_cmds::push(&file, &sidecar),
        Command::Inject(args) => inject::run(&args),
        Command::ControlToken { key, ttl } => fleet_cmds::control_token(&key, ttl),
        Command::Audit {
            command: AuditCommand::Verify { path, key, json },
        } => audit_cmds::verify(&path, &key, json),
        Command::Audit {
            command:
                AuditCommand::Show {
                    path,
                    consumer,
                    port,
                    decision,
                    request_id,
                    client_request_id,
                    since,
                    until,
                    json,
                },
        } => audit_cmds::show(audit_cmds::ShowArgs {
            path: &path,
            consumer,
            port,
            decision,
            request_id,
            client_request_id,
            since,
            until,
            json,
        }),
        Command::Bundle {
            command: BundleCommand::Inspect { file, trust, json },
        } => bundle_cmds::inspect(&file, &trust, json),
        Command::Token {
            key,
            sub,
            groups,
            purpose,
            ttl,
            issuer,
        } => token_cmd::run(&meshgov_conformance::token::TokenArgs {
            key: &key,
            sub: &sub,
            groups: &groups,
            purpose: &purpose,
            issuer: &issuer,
            ttl,
            now_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                errln!("meshgov: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}
