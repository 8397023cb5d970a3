//! Policy repository files: TOML (mesh, anonymization, privacy, standards,
//! plugins, tests), the Cedar schema and policies, and product descriptors
//! (YAML), through `meshgov_core::check` from in-memory sources, as
//! `meshgov check`, `test`, `build` and `serve` load them.
//!
//! The mode byte picks which file of the example mesh the input replaces (or
//! joins). Invariants: no panic; a repository that checks clean compiles to
//! bundle components that load back (`Policies::from_components`) into the
//! same components, and its policy tests run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgov_core::plugins::NoPlugins;
use meshgov_core::source::SourceFile;
use meshgov_core::{Policies, check, testing};
use meshgov_fuzz::{example, split_mode};

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut src = example().sources.clone();
    let replace = |files: &mut Vec<SourceFile>, path: &str| match files.first_mut() {
        Some(f) => *f = SourceFile::new(f.path.clone(), text),
        None => files.push(SourceFile::new(path, text)),
    };
    match mode % 10 {
        0 => src.mesh = Some(SourceFile::new("mesh.toml", text)),
        1 => src.schema = Some(SourceFile::new("access/schema.cedarschema", text)),
        2 => replace(&mut src.access, "access/fuzz.cedar"),
        3 => src.access.push(SourceFile::new("access/fuzz.cedar", text)),
        4 => replace(&mut src.anonymization, "anonymization/fuzz.toml"),
        5 => replace(&mut src.privacy, "privacy/fuzz.toml"),
        6 => replace(&mut src.standards, "standards/fuzz.toml"),
        7 => src.plugins.push(SourceFile::new("plugins/fuzz.toml", text)),
        8 => replace(&mut src.tests, "tests/fuzz.toml"),
        _ => replace(&mut src.products, "products/fuzz.yaml"),
    }
    let checked = check(&src);
    let Some(policies) = checked.policies else {
        assert!(
            !checked.diagnostics.is_empty(),
            "check compiled nothing and said nothing"
        );
        return;
    };
    let components = policies.components();
    let reloaded = Policies::from_components(&components, None)
        .unwrap_or_else(|e| panic!("checked policies do not load back from their components: {e}"));
    assert!(
        reloaded.components() == components,
        "components change across a load"
    );
    let _ = testing::run(&policies, &NoPlugins, &checked.products, &checked.tests);
});
