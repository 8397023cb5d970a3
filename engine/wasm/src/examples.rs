//! Builds the example plugins in `wasm-plugins/` from source, for tests and
//! benchmarks, with the Debian wasm32 toolchain (`rustc-web`, `cargo-web`,
//! `rust-web-src`, an `lld` providing `wasm-ld`; `.ci/setup` installs them).
//!
//! The build goes to `<target dir>/wasm-plugins`, never into the
//! repository, and is incremental: the first build compiles `core` and
//! `alloc` for wasm32 (about two minutes), later ones only what changed.
//! One build per process; concurrent processes wait on cargo's lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The example plugins: crate name, module file, manifest kind.
pub const EXAMPLES: &[(&str, &str, &str)] = &[
    ("phone-mask", "phone_mask.wasm", "transform"),
    ("artist-urn", "artist_urn.wasm", "validator"),
    ("age-band", "age_band.wasm", "transform"),
];

/// Where the built modules are.
#[derive(Debug, Clone)]
pub struct Built {
    dir: PathBuf,
}

impl Built {
    /// The module of example `name` (e.g. `phone-mask`).
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        EXAMPLES
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, file, _)| self.dir.join(file))
    }

    /// The module bytes of example `name`.
    pub fn bytes(&self, name: &str) -> Result<Vec<u8>, String> {
        let path = self
            .path(name)
            .ok_or_else(|| format!("no example plugin `{name}`"))?;
        std::fs::read(&path).map_err(|e| format!("`{}`: {e}", path.display()))
    }
}

/// The repository's `wasm-plugins/` directory.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wasm-plugins")
}

/// What the toolchain lacks, if anything; else the linker to use.
fn toolchain() -> Result<String, String> {
    let mut missing = Vec::new();
    for (path, package) in [
        ("/usr/bin/rustc", "rustc-web"),
        ("/usr/bin/cargo", "cargo-web"),
        ("/usr/lib/rustlib/src/rust/library/alloc", "rust-web-src"),
    ] {
        if !Path::new(path).exists() {
            missing.push(package);
        }
    }
    let linker = ["rust-lld", "wasm-ld", "wasm-ld-22", "wasm-ld-19"]
        .into_iter()
        .find(|l| Path::new("/usr/bin").join(l).exists());
    if linker.is_none() {
        missing.push("lld-19 (wasm-ld)");
    }
    match (missing.is_empty(), linker) {
        (true, Some(l)) => Ok(l.to_string()),
        _ => Err(format!(
            "the wasm32 toolchain is missing: install {} (run `.ci/setup`)",
            missing.join(", ")
        )),
    }
}

/// The cargo target directory this test or bench binary was built into.
fn target_dir() -> PathBuf {
    if let Some(dir) = option_env!("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|a| {
                    a.file_name()
                        .is_some_and(|n| n == "debug" || n == "release")
                })
                .and_then(Path::parent)
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| std::env::temp_dir().join("meshgov-target"))
}

/// Builds the examples (once per process). `Ok(None)` when the toolchain
/// is absent outside CI: the caller skips, saying why. In CI (`CI` set) an
/// absent toolchain is an error, so nothing is skipped silently.
pub fn build() -> Result<Option<Built>, String> {
    static BUILT: OnceLock<Result<Option<Built>, String>> = OnceLock::new();
    BUILT.get_or_init(build_now).clone()
}

fn build_now() -> Result<Option<Built>, String> {
    let linker = match toolchain() {
        Ok(l) => l,
        Err(why) if std::env::var_os("CI").is_some() => return Err(why),
        Err(why) => {
            eprintln!("skipping: {why}");
            return Ok(None);
        }
    };
    let out = target_dir().join("wasm-plugins");
    let mut cmd = Command::new("/usr/bin/cargo");
    cmd.current_dir(source_dir())
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "-Zbuild-std=core,alloc",
        ])
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &out)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    if linker != "rust-lld" {
        cmd.env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", &linker);
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run the wasm32 cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the example plugins failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(Some(Built {
        dir: out.join("wasm32-unknown-unknown/release"),
    }))
}

/// The product the example repository adds: `listeners` (port
/// `listeners`: `phone` through phone-mask, `age` through age-band, every
/// record through artist-urn) and port `hostile` (`x` through the plugin
/// `hostile`, whatever module the caller gives it).
const LISTENERS: &str = r#"apiVersion: v3.0.2
kind: DataContract
id: listeners
name: Listeners
version: 1.0.0
status: active
domain: playback
dataProduct: listeners
team:
  name: playback-insights
schema:
  - name: listeners
    properties:
      - name: listener_id
        logicalType: string
        classification: internal
      - name: phone
        logicalType: string
        classification: pii.phone
      - name: age
        logicalType: integer
        classification: pii.age
      - name: artist_id
        logicalType: string
        classification: public
  - name: hostile
    properties:
      - name: id
        logicalType: string
        classification: internal
      - name: x
        logicalType: string
        classification: test.hostile
customProperties:
  - property: meshgov.outputPorts
    value:
      - name: listeners
        kind: records
      - name: hostile
        kind: records
"#;

const RULES: &str = r#"
[[rules]]
id = "anon.phone"
classification = "pii.phone"
transform = "plugin"
plugin = "phone-mask"

[[rules]]
id = "anon.age"
classification = "pii.age"
transform = "plugin"
plugin = "age-band"

[[rules]]
id = "anon.hostile"
classification = "test.hostile"
transform = "plugin"
plugin = "hostile"
"#;

const STANDARD: &str = r#"
[[rules]]
id = "std.artist-urn"
check = "plugin"
plugin = "artist-urn"
products = ["playback/listeners"]
message = "artist ids must be urn:mesh:artist: URNs"
fix = "emit federated artist ids"
"#;

const TESTS: &str = r#"
[[cases]]
name = "analysts see masked phones and age bands; nonconforming records are withheld"
principal = { id = "ana", groups = ["analysts"] }
product = "playback/listeners"
port = "listeners"
purpose = "product-analytics"
expect = "allow"
fields = { phone = "plugin:phone-mask", age = "plugin:age-band", artist_id = "clear" }
input = [
  { listener_id = "l-1", phone = "+44 20 7946 0958", age = 37, artist_id = "urn:mesh:artist:a-1" },
  { listener_id = "l-2", phone = "555 010 4477", age = 19, artist_id = "spotify:artist:42" },
]
output = ['{"listener_id": "l-1", "phone": "+44 XX XXXX XX58", "age": "35-44", "artist_id": "urn:mesh:artist:a-1"}']
"#;

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

impl Built {
    /// Writes into `dir` the example mesh (`policies/`) plus a `listeners`
    /// product that uses the three example plugins, a plugin `hostile`
    /// made of `hostile_module`, and a policy test over the plugins.
    pub fn policy_repo(&self, dir: &Path, hostile_module: &[u8]) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        copy_dir(&source_dir().join("../policies"), dir).map_err(io)?;
        let append = |rel: &str, text: &str| -> Result<(), String> {
            let p = dir.join(rel);
            let mut s = std::fs::read_to_string(&p).unwrap_or_default();
            s.push_str(text);
            std::fs::write(p, s).map_err(io)
        };
        append(
            "mesh.toml",
            "\n[[classifications]]\nid = \"pii.phone\"\nlevel = \"restricted\"\n\n[[classifications]]\nid = \"pii.age\"\nlevel = \"confidential\"\n\n[[classifications]]\nid = \"test.hostile\"\nlevel = \"confidential\"\n",
        )?;
        std::fs::write(dir.join("products/listeners.yaml"), LISTENERS).map_err(io)?;
        append(
            "access/listeners.cedar",
            "@id(\"listeners.analysts-read\")\npermit (principal in Group::\"analysts\", action == Action::\"read\", resource in DataProduct::\"playback/listeners\")\nwhen { context.purpose == \"product-analytics\" };\n",
        )?;
        let mut plugins = String::new();
        let mut modules = Vec::new();
        for (name, _, kind) in EXAMPLES {
            modules.push((*name, *kind, self.bytes(name)?));
        }
        modules.push(("hostile", "transform", hostile_module.to_vec()));
        for (name, kind, bytes) in modules {
            std::fs::write(dir.join(format!("plugins/{name}.wasm")), &bytes).map_err(io)?;
            let sha = {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            plugins.push_str(&format!(
                "[[plugins]]\nname = \"{name}\"\nkind = \"{kind}\"\nmodule = \"{name}.wasm\"\nsha256 = \"{sha}\"\nfuel = 200000\nmax_memory_bytes = 4194304\n\n"
            ));
        }
        std::fs::write(dir.join("plugins/plugins.toml"), plugins).map_err(io)?;
        std::fs::write(dir.join("anonymization/plugins.toml"), RULES).map_err(io)?;
        append("standards/schema.toml", STANDARD)?;
        std::fs::write(dir.join("tests/plugins.toml"), TESTS).map_err(io)
    }
}
