//! `meshgov check`: loads every file of a policy repository, reports every
//! problem with its location and a fix, and compiles what is valid into
//! [`Policies`].

use crate::access::Access;
use crate::access::{Principal, ProductEntities};
use crate::anonymization::{AnonRule, AnonymizationFile, Method, RowFilter};
use crate::descriptor::{Descriptor, ProductInfo, position_of};
use crate::diag::{Diagnostic, Diagnostics, Position};
use crate::mesh::MeshConfig;
use crate::plugins::{MAX_PLUGIN_MEMORY, ModuleInspector, PluginFile, PluginKind, PluginManifest};
use crate::policies::Policies;
use crate::privacy::{AGGREGATIONS, PrivacyFile, PrivacyRule};
use crate::source::{SourceFile, SourceSet, Step};
use crate::standards::{Check, StandardRule, StandardsFile};
use crate::testing::TestFile;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// What `check` found and compiled.
#[derive(Debug)]
pub struct Checked {
    /// Present only when there were no errors.
    pub policies: Option<Policies>,
    pub diagnostics: Vec<Diagnostic>,
    pub tests: Vec<(String, TestFile)>,
    pub products: Vec<(String, Descriptor)>,
}

/// Where each rule id was first defined, so duplicates point at both places.
#[derive(Default)]
struct Ids(HashMap<String, String>);

impl Ids {
    fn claim(&mut self, id: &str, path: &str, pos: Position, diags: &mut Diagnostics) {
        let here = format!("{path}:{}:{}", pos.line, pos.col);
        if let Some(first) = self.0.get(id) {
            diags.push(Diagnostic::error(
                path,
                pos,
                "DUPLICATE-ID",
                format!("id `{id}` is already used at {first}"),
                "rule ids must be unique across the repository; rename one",
            ));
        } else {
            self.0.insert(id.to_string(), here);
        }
    }
}

/// Checks a repository without loading plugin modules: their digests are
/// verified, but not their exports. See [`check_with`].
pub fn check(src: &SourceSet) -> Checked {
    check_with(src, None)
}

/// Checks a repository; with an `inspector`, every plugin module whose
/// digest matches is also loaded to confirm its exports and ABI version.
pub fn check_with(src: &SourceSet, inspector: Option<&dyn ModuleInspector>) -> Checked {
    let mut diags = Diagnostics::default();
    let ids = Ids::default();

    let mesh = match &src.mesh {
        None => {
            diags.push(Diagnostic::error(
                "mesh.toml",
                Position { line: 1, col: 1 },
                "MESH-MISSING",
                "the repository has no `mesh.toml`",
                "run `meshgov init` to scaffold one",
            ));
            None
        }
        Some(f) => check_mesh(f, &mut diags),
    };

    let mut c = Checker {
        diags,
        ids,
        mesh,
        plugins: Vec::new(),
        known: Vec::new(),
        unresolved: false,
    };
    let access = Access::load(src.schema.as_ref(), &src.access, &mut c.diags);
    for (id, _) in access.iter().flat_map(|a| a.texts()) {
        // Where the policy's `@id` is written, so a clash points at it.
        let annotation = format!("@id(\"{id}\")");
        let at = src
            .access
            .iter()
            .find_map(|f| {
                let pos = f.position(f.text.find(&annotation)?);
                Some(format!("{}:{}:{}", f.path, pos.line, pos.col))
            })
            .unwrap_or_else(|| "an access policy".into());
        c.ids.0.insert(id.clone(), at);
    }
    let products = c.products(src);
    if let Some(access) = &access {
        c.product_entities(src, access);
    }
    c.plugins(src, inspector);
    let (anonymization, row_filters) = c.anonymization(src);
    let privacy = c.privacy(src);
    let standards = c.standards(src);
    let tests = c
        .parse_all::<TestFile>(&src.tests, "TEST-PARSE")
        .into_iter()
        .map(|(f, t)| (f.path.clone(), t))
        .collect();
    let Checker {
        diags,
        mesh,
        plugins,
        ..
    } = c;
    let policies = match (mesh, access) {
        (Some(mesh), Some(access)) if !diags.has_errors() => {
            let modules: BTreeMap<String, Vec<u8>> = plugins
                .iter()
                .filter_map(|p| {
                    src.modules
                        .get(&p.module)
                        .map(|b| (p.name.clone(), b.clone()))
                })
                .collect();
            Some(Policies {
                mesh,
                access,
                anonymization,
                row_filters,
                privacy,
                standards,
                plugins,
                modules,
                product: None,
            })
        }
        _ => None,
    };
    Checked {
        policies,
        diagnostics: diags.sorted(),
        tests,
        products,
    }
}

/// The checker's running state: findings so far, the ids claimed, and what
/// later files are checked against.
struct Checker {
    diags: Diagnostics,
    ids: Ids,
    mesh: Option<MeshConfig>,
    plugins: Vec<PluginManifest>,
    /// The products the repository describes, resolved, with their files.
    known: Vec<(String, ProductInfo)>,
    /// Some descriptor did not resolve; scopes are then not checked, so its
    /// error is not repeated for every rule that names it.
    unresolved: bool,
}

impl Checker {
    /// Parses every file of one kind; a file that does not parse becomes a
    /// located diagnostic and is left out.
    fn parse_all<'f, T: serde::de::DeserializeOwned>(
        &mut self,
        files: &'f [SourceFile],
        rule: &'static str,
    ) -> Vec<(&'f SourceFile, T)> {
        let mut out = Vec::new();
        for f in files {
            match f.parse_toml::<T>(rule) {
                Ok(doc) => out.push((f, doc)),
                Err(d) => self.diags.push(d),
            }
        }
        out
    }

    fn plugin_kind(&self, name: &str) -> Option<PluginKind> {
        self.plugins.iter().find(|p| p.name == name).map(|p| p.kind)
    }

    fn plugins(&mut self, src: &SourceSet, inspector: Option<&dyn ModuleInspector>) {
        for (f, doc) in self.parse_all::<PluginFile>(&src.plugins, "PLUGIN-PARSE") {
            let loc = f.locator();
            for (i, p) in doc.plugins.iter().enumerate() {
                let at = |k: &str| loc.at(&[Step::Key("plugins"), Step::Index(i), Step::Key(k)]);
                self.ids.claim(
                    &format!("plugin:{}", p.name),
                    &f.path,
                    at("name"),
                    &mut self.diags,
                );
                match src.modules.get(&p.module) {
                    None if !crate::plugins::module_path_is_confined(&p.module) => {
                        self.diags.push(Diagnostic::error(
                            &f.path,
                            at("module"),
                            "PLUGIN-MODULE",
                            format!("plugin module `{}` is outside `plugins/`", p.module),
                            "give a relative path inside `plugins/`, without `..`",
                        ))
                    }
                    None => self.diags.push(Diagnostic::error(
                        &f.path,
                        at("module"),
                        "PLUGIN-MODULE",
                        format!("plugin module `{}` was not found", p.module),
                        "build the plugin and give its path relative to `plugins/`",
                    )),
                    Some(bytes) => {
                        let digest = hex::encode(Sha256::digest(bytes));
                        let pinned = digest == p.sha256.to_ascii_lowercase();
                        if let (true, Some(inspector)) = (pinned, inspector)
                            && let Err(why) = inspector.inspect(p, bytes)
                        {
                            self.diags.push(Diagnostic::error(
                                &f.path,
                                at("module"),
                                "PLUGIN-ABI",
                                format!("plugin `{}`: {why}", p.name),
                                "build the plugin against the guest SDK in `wasm-plugins/sdk` (see `wasm-plugins/ABI.md`)",
                            ));
                        }
                        if !pinned {
                            self.diags.push(Diagnostic::error(
                                &f.path,
                                at("sha256"),
                                "PLUGIN-DIGEST",
                                format!(
                                    "plugin `{}`: module digest is {digest}, the manifest pins {}",
                                    p.name, p.sha256
                                ),
                                "rebuild the pinned module, or update `sha256` after reviewing the new one",
                            ));
                        }
                    }
                }
                if p.fuel == 0 {
                    self.diags.push(Diagnostic::error(
                        &f.path,
                        at("fuel"),
                        "PLUGIN-LIMIT",
                        format!("plugin `{}`: `fuel` must be positive", p.name),
                        "give the fuel per value, e.g. `fuel = 100000`",
                    ));
                }
                if p.max_memory_bytes == 0 || p.max_memory_bytes > MAX_PLUGIN_MEMORY {
                    self.diags.push(Diagnostic::error(
                        &f.path,
                        at("max_memory_bytes"),
                        "PLUGIN-LIMIT",
                        format!(
                            "plugin `{}`: `max_memory_bytes` = {} is outside 1..={MAX_PLUGIN_MEMORY}",
                            p.name, p.max_memory_bytes
                        ),
                        "use e.g. `max_memory_bytes = 16777216` (16 MiB)",
                    ));
                }
                self.plugins.push(p.clone());
            }
        }
    }

    fn anonymization(&mut self, src: &SourceSet) -> (Vec<AnonRule>, Vec<RowFilter>) {
        let mut anonymization: Vec<AnonRule> = Vec::new();
        let mut row_filters = Vec::new();
        for (f, doc) in self.parse_all::<AnonymizationFile>(&src.anonymization, "ANON-PARSE") {
            let loc = f.locator();
            for (i, r) in doc.rules.into_iter().enumerate() {
                let at = |k: &str| loc.at(&[Step::Key("rules"), Step::Index(i), Step::Key(k)]);
                self.ids.claim(&r.id, &f.path, at("id"), &mut self.diags);
                self.scope(f, "rules", i, &r.domains, &r.products, &[]);
                if let Some(mesh) = &self.mesh
                    && mesh.classification(&r.classification).is_none()
                {
                    self.diags.push(unknown_classification(
                        &f.path,
                        at("classification"),
                        &r.classification,
                        mesh,
                    ));
                }
                let err = |k: &str, rule: &'static str, msg: String, hint: &str| {
                    Diagnostic::error(&f.path, at(k), rule, msg, hint)
                };
                let rule = match AnonRule::try_from(r) {
                    Ok(rule) => rule,
                    Err(e) => {
                        self.diags
                            .push(err(e.key(), e.code(), e.to_string(), &e.hint()));
                        continue;
                    }
                };
                if let Method::Plugin { name } = &rule.method {
                    match self.plugin_kind(name) {
                        None => self.diags.push(err(
                            "plugin",
                            "ANON-PLUGIN",
                            format!("plugin `{name}` is not declared"),
                            "declare it in `plugins/*.toml`, or fix the name",
                        )),
                        Some(k) if k != PluginKind::Transform => self.diags.push(err(
                            "plugin",
                            "ANON-PLUGIN",
                            format!("plugin `{name}` is a `{}`, not a `transform`", k.name()),
                            "name a transform plugin",
                        )),
                        Some(_) => {}
                    }
                }
                if let Some(other) = anonymization
                    .iter()
                    .find(|o| o.classification == rule.classification && scopes_overlap(o, &rule))
                {
                    self.diags.push(err(
                    "classification",
                    "ANON-CONFLICT",
                    format!("rules `{}` and `{}` both treat `{}` at the same specificity for some product", other.id, rule.id, rule.classification),
                    "keep one rule per classification and scope, or narrow one with `products`/`domains`",
                ));
                }
                anonymization.push(rule);
            }
            for (i, r) in doc.row_filters.into_iter().enumerate() {
                let at =
                    |k: &str| loc.at(&[Step::Key("row_filters"), Step::Index(i), Step::Key(k)]);
                self.ids.claim(&r.id, &f.path, at("id"), &mut self.diags);
                self.scope(f, "row_filters", i, &r.domains, &r.products, &r.ports);
                if let Some(mesh) = &self.mesh {
                    for (j, p) in r.purposes.iter().enumerate() {
                        if !mesh.has_purpose(p) {
                            let pos = loc.at(&[
                                Step::Key("row_filters"),
                                Step::Index(i),
                                Step::Key("purposes"),
                                Step::Index(j),
                            ]);
                            self.diags.push(unknown_purpose(&f.path, pos, p, mesh));
                        }
                    }
                }
                match RowFilter::try_from(r) {
                    Ok(filter) => row_filters.push(filter),
                    Err(e) => self.diags.push(Diagnostic::error(
                        &f.path,
                        at(e.key()),
                        e.code(),
                        e.to_string(),
                        e.hint(),
                    )),
                }
            }
        }

        (anonymization, row_filters)
    }

    fn privacy(&mut self, src: &SourceSet) -> Vec<PrivacyRule> {
        let mut privacy = Vec::new();
        for (f, doc) in self.parse_all::<PrivacyFile>(&src.privacy, "PRIV-PARSE") {
            let loc = f.locator();
            for (i, r) in doc.rules.iter().enumerate() {
                let at = |k: &str| loc.at(&[Step::Key("rules"), Step::Index(i), Step::Key(k)]);
                self.ids.claim(&r.id, &f.path, at("id"), &mut self.diags);
                self.scope(f, "rules", i, &r.domains, &r.products, &r.ports);
                let caps = self
                    .mesh
                    .as_ref()
                    .map(|m| m.privacy.clone())
                    .unwrap_or_default();
                let mut eps = |k: &str, v: f64, cap: f64, what: &str| {
                    if !(v.is_finite() && v > 0.0) {
                        self.diags.push(Diagnostic::error(
                            &f.path,
                            at(k),
                            "PRIV-EPSILON",
                            format!(
                                "rule `{}`: `{k}` must be a positive number, found {v}",
                                r.id
                            ),
                            format!("set `{k}` above 0 and at most {cap}"),
                        ));
                    } else if v > cap {
                        self.diags.push(Diagnostic::error(&f.path, at(k), "PRIV-EPSILON", format!("rule `{}`: `{k}` = {v} exceeds the mesh cap {cap} ({what})", r.id), format!("lower `{k}` to at most {cap}, or raise the cap in `mesh.toml` [privacy]")));
                    }
                };
                eps(
                    "epsilon_budget",
                    r.epsilon_budget,
                    caps.max_epsilon_budget,
                    "max_epsilon_budget",
                );
                let query_cap = if r.epsilon_budget > 0.0 {
                    caps.max_epsilon_per_query.min(r.epsilon_budget)
                } else {
                    caps.max_epsilon_per_query
                };
                eps(
                    "max_epsilon_per_query",
                    r.max_epsilon_per_query,
                    query_cap,
                    "the mesh's `max_epsilon_per_query`, and never above the rule's own budget",
                );
                if let Some(p) = r.product_epsilon_budget
                    && !(p.is_finite() && p > 0.0)
                {
                    self.diags.push(Diagnostic::error(
                        &f.path,
                        at("product_epsilon_budget"),
                        "PRIV-EPSILON",
                        format!(
                            "rule `{}`: `product_epsilon_budget` must be positive, found {p}",
                            r.id
                        ),
                        "set a positive product-wide budget",
                    ));
                }
                if !(r.delta_budget.is_finite()
                    && r.delta_budget >= 0.0
                    && r.delta_budget <= caps.max_delta)
                {
                    self.diags.push(Diagnostic::error(
                        &f.path,
                        at("delta_budget"),
                        "PRIV-DELTA",
                        format!(
                            "rule `{}`: `delta_budget` = {} is outside [0, {}]",
                            r.id, r.delta_budget, caps.max_delta
                        ),
                        "use a delta between 0 and the mesh's `max_delta`",
                    ));
                }
                for (field, [lo, hi]) in &r.bounds {
                    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                        self.diags.push(Diagnostic::error(
                            &f.path,
                            loc.at(&[
                                Step::Key("rules"),
                                Step::Index(i),
                                Step::Key("bounds"),
                                Step::Key(field),
                            ]),
                            "PRIV-BOUNDS",
                            format!(
                                "rule `{}`: bounds for `{field}` must be finite with lower < upper",
                                r.id
                            ),
                            "write `field = [lower, upper]`",
                        ));
                    }
                }
                if r.window_seconds == 0 {
                    self.diags.push(Diagnostic::error(
                        &f.path,
                        at("window_seconds"),
                        "PRIV-WINDOW",
                        format!("rule `{}`: `window_seconds` must be positive", r.id),
                        "use e.g. 86400 for a daily budget",
                    ));
                }
                if let Some(mesh) = &self.mesh {
                    for (j, pb) in r.purpose_budgets.iter().enumerate() {
                        let pos = loc.at(&[
                            Step::Key("rules"),
                            Step::Index(i),
                            Step::Key("purpose_budgets"),
                            Step::Index(j),
                        ]);
                        if !mesh.has_purpose(&pb.purpose) {
                            let at = loc.at(&[
                                Step::Key("rules"),
                                Step::Index(i),
                                Step::Key("purpose_budgets"),
                                Step::Index(j),
                                Step::Key("purpose"),
                            ]);
                            self.diags
                                .push(unknown_purpose(&f.path, at, &pb.purpose, mesh));
                        }
                        if !(pb.epsilon_budget.is_finite()
                            && pb.epsilon_budget > 0.0
                            && pb.epsilon_budget <= r.epsilon_budget)
                        {
                            self.diags.push(Diagnostic::error(&f.path, pos, "PRIV-EPSILON", format!("rule `{}`: the budget for purpose `{}` must be positive and at most the rule's `epsilon_budget`", r.id, pb.purpose), "lower the purpose budget"));
                        }
                    }
                }
                match r.clone().parse() {
                    Ok(rule) => privacy.push(rule),
                    Err((j, a)) => self.diags.push(Diagnostic::error(
                        &f.path,
                        loc.at(&[
                            Step::Key("rules"),
                            Step::Index(i),
                            Step::Key("aggregations"),
                            Step::Index(j),
                        ]),
                        "PRIV-AGGREGATION",
                        format!("unknown aggregation `{a}`"),
                        format!("use one of {}", AGGREGATIONS.join(", ")),
                    )),
                }
            }
        }

        privacy
    }

    fn standards(&mut self, src: &SourceSet) -> Vec<StandardRule> {
        let mut standards = Vec::new();
        for (f, doc) in self.parse_all::<StandardsFile>(&src.standards, "STD-PARSE") {
            let loc = f.locator();
            for (i, r) in doc.rules.into_iter().enumerate() {
                let at = |k: &str| loc.at(&[Step::Key("rules"), Step::Index(i), Step::Key(k)]);
                self.ids.claim(&r.id, &f.path, at("id"), &mut self.diags);
                self.scope(f, "rules", i, &r.domains, &r.products, &[]);
                let r = match r.parse() {
                    Ok(rule) => rule,
                    Err(unknown) => {
                        let known: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
                        self.diags.push(Diagnostic::error(
                            &f.path,
                            at("check"),
                            "STD-CHECK",
                            format!("unknown check `{unknown}`"),
                            format!("use one of {}", known.join(", ")),
                        ));
                        continue;
                    }
                };
                let (check, needs) = (r.check.name(), r.check.takes());
                for (key, value) in [("pattern", &r.pattern), ("field_pattern", &r.field_pattern)] {
                    if let Some(re) = value {
                        if let Err(e) = regex::Regex::new(re) {
                            let detail = e
                                .to_string()
                                .lines()
                                .last()
                                .unwrap_or("invalid")
                                .trim()
                                .to_string();
                            self.diags.push(Diagnostic::error(
                                &f.path,
                                at(key),
                                "STD-REGEX",
                                format!("rule `{}`: `{key}` is not a valid regex: {detail}", r.id),
                                "fix the regular expression (Rust `regex` syntax)",
                            ));
                        }
                    } else if r.check.needs().contains(&key) {
                        self.diags.push(Diagnostic::error(
                            &f.path,
                            at("check"),
                            "STD-PARAM",
                            format!("rule `{}`: check `{check}` needs `{key}`", r.id),
                            format!("`{check}` takes {needs}"),
                        ));
                    }
                }
                if r.check.needs().contains(&"logical_type") && r.logical_type.is_none() {
                    self.diags.push(Diagnostic::error(
                        &f.path,
                        at("check"),
                        "STD-PARAM",
                        format!("rule `{}`: check `{check}` needs `logical_type`", r.id),
                        format!("`{check}` takes {needs}"),
                    ));
                }
                if r.check.needs().contains(&"keys") && r.keys.is_empty() {
                    self.diags.push(Diagnostic::error(
                        &f.path,
                        at("check"),
                        "STD-PARAM",
                        format!("rule `{}`: check `{check}` needs `keys`", r.id),
                        format!("`{check}` takes {needs}"),
                    ));
                }
                if r.check == Check::Plugin {
                    match r.plugin.as_deref().map(|n| (n, self.plugin_kind(n))) {
                        None => self.diags.push(Diagnostic::error(
                            &f.path,
                            at("check"),
                            "STD-PLUGIN",
                            format!("rule `{}`: check `plugin` needs `plugin = \"name\"`", r.id),
                            "name a validator plugin",
                        )),
                        Some((n, None)) => self.diags.push(Diagnostic::error(
                            &f.path,
                            at("plugin"),
                            "STD-PLUGIN",
                            format!("plugin `{n}` is not declared"),
                            "declare it in `plugins/*.toml`",
                        )),
                        Some((n, Some(k))) if k != PluginKind::Validator => {
                            self.diags.push(Diagnostic::error(
                                &f.path,
                                at("plugin"),
                                "STD-PLUGIN",
                                format!("plugin `{n}` is a `{}`, not a `validator`", k.name()),
                                "name a validator plugin",
                            ))
                        }
                        _ => {}
                    }
                }
                standards.push(r);
            }
        }

        standards
    }

    fn products(&mut self, src: &SourceSet) -> Vec<(String, Descriptor)> {
        let mut products: Vec<(String, Descriptor)> = Vec::new();
        for f in &src.products {
            match Descriptor::parse(&f.path, &f.text) {
                Ok(d) => {
                    if let Some((other, _)) = products
                        .iter()
                        .find(|(_, o)| o.product_id() == d.product_id())
                    {
                        self.diags.push(Diagnostic::error(
                            &f.path,
                            Position { line: 1, col: 1 },
                            "PRODUCT-DUPLICATE",
                            format!(
                                "product `{}` is also described in `{other}`",
                                d.product_id()
                            ),
                            "keep one descriptor per product",
                        ));
                    }
                    if let Some(mesh) = self.mesh.clone() {
                        self.descriptor_classifications(&f.path, &d, &mesh);
                        match ProductInfo::resolve(&d, &mesh) {
                            Ok(info) => self.known.push((f.path.clone(), info)),
                            Err(e) => {
                                self.diags.push(e.diagnostic(&f.path));
                                self.unresolved = true;
                            }
                        }
                    }
                    products.push((f.path.clone(), d));
                }
                Err(d) => self.diags.push(d),
            }
        }

        products
    }

    fn descriptor_classifications(&mut self, path: &str, d: &Descriptor, mesh: &MeshConfig) {
        for p in d.schema.iter().flat_map(|o| &o.properties) {
            match &p.classification {
                Some(c) if mesh.classification(&c.value).is_none() => self
                    .diags
                    .push(unknown_classification(path, position_of(c), &c.value, mesh)),
                Some(_) => {}
                None => self.diags.push(Diagnostic::error(
                    path,
                    position_of(&p.name),
                    "PRODUCT-UNCLASSIFIED",
                    format!(
                        "field `{}` has no classification; it is withheld from every read",
                        p.name.value
                    ),
                    "add `classification: …` with a classification from `mesh.toml`",
                )),
            }
        }
    }

    /// Every product's entities, and a consumer as meshgov builds it from a
    /// token, must fit the Cedar schema; otherwise every decision on them
    /// fails (and denies).
    fn product_entities(&mut self, src: &SourceSet, access: &Access) {
        let schema_path = src
            .schema
            .as_ref()
            .map_or("access/schema.cedarschema", |f| f.path.as_str());
        let probe = Principal {
            id: "probe".into(),
            groups: vec!["probe".into()],
            attrs: Default::default(),
        };
        let mut consumer_checked = false;
        for (path, info) in &self.known {
            match ProductEntities::build(info, access) {
                Err(e) => self.diags.push(Diagnostic::error(
                    path,
                    Position { line: 1, col: 1 },
                    "PRODUCT-SCHEMA",
                    e,
                    "declare in the schema exactly the attributes meshgov builds (see `meshgov init`)",
                )),
                Ok(entities) if !consumer_checked => {
                    consumer_checked = true;
                    if let Err(e) = entities.with_principal(&probe) {
                        self.diags.push(Diagnostic::error(
                            schema_path,
                            Position { line: 1, col: 1 },
                            "ACCESS-SCHEMA-BASE",
                            format!("a consumer as meshgov builds it does not fit the schema: {e}"),
                            "`Consumer` may require only `sub`; declare other attributes optional (`attr?: Type`)",
                        ));
                    }
                }
                Ok(_) => {}
            }
        }
    }

    /// A rule scoped to a domain, product or port the repository does not
    /// describe would silently never apply; with no descriptors in the
    /// repository there is nothing to check against.
    fn scope(
        &mut self,
        f: &SourceFile,
        table: &str,
        i: usize,
        domains: &[String],
        products: &[String],
        ports: &[String],
    ) {
        if self.known.is_empty() || self.unresolved {
            return;
        }
        let loc = f.locator();
        let at = |k: &str, j: usize| {
            loc.at(&[
                Step::Key(table),
                Step::Index(i),
                Step::Key(k),
                Step::Index(j),
            ])
        };
        let mut found = Vec::new();
        for (j, d) in domains.iter().enumerate() {
            if !self.known.iter().any(|(_, p)| &p.domain == d) {
                let all = self.known.iter().map(|(_, p)| p.domain.as_str());
                found.push(unknown_scope(f, at("domains", j), "domain", d, all));
            }
        }
        for (j, id) in products.iter().enumerate() {
            if !self.known.iter().any(|(_, p)| &p.id == id) {
                let all = self.known.iter().map(|(_, p)| p.id.as_str());
                found.push(unknown_scope(f, at("products", j), "product", id, all));
            }
        }
        let in_scope = || {
            self.known
                .iter()
                .map(|(_, p)| p)
                .filter(|p| crate::scope::applies(domains, products, &p.domain, &p.id))
        };
        for (j, port) in ports.iter().enumerate() {
            if !in_scope().any(|p| p.port(port).is_some()) {
                let all = in_scope().flat_map(|p| p.ports.iter().map(|x| x.name.as_str()));
                found.push(unknown_scope(f, at("ports", j), "port", port, all));
            }
        }
        for d in found {
            self.diags.push(d);
        }
    }
}

fn check_mesh(f: &SourceFile, diags: &mut Diagnostics) -> Option<MeshConfig> {
    let mesh: MeshConfig = f.parse_toml("MESH-PARSE").map_err(|d| diags.push(d)).ok()?;
    let loc = f.locator();
    let before = diags.error_count();
    if mesh.id.trim().is_empty() {
        diags.push(Diagnostic::error(
            &f.path,
            loc.at(&[Step::Key("id")]),
            "MESH-ID",
            "the mesh id is empty",
            "set `id = \"my-mesh\"`",
        ));
    }
    let mut seen = HashMap::new();
    for (i, c) in mesh.classifications.iter().enumerate() {
        let pos = loc.at(&[
            Step::Key("classifications"),
            Step::Index(i),
            Step::Key("id"),
        ]);
        if let Some(first) = seen.insert(c.id.clone(), pos) {
            diags.push(Diagnostic::error(
                &f.path,
                pos,
                "DUPLICATE-ID",
                format!(
                    "classification `{}` is already declared at line {}",
                    c.id, first.line
                ),
                "declare each classification once",
            ));
        }
    }
    let mut seen = HashMap::new();
    for (i, p) in mesh.purposes.iter().enumerate() {
        let pos = loc.at(&[Step::Key("purposes"), Step::Index(i), Step::Key("id")]);
        if let Some(first) = seen.insert(p.id.clone(), pos) {
            diags.push(Diagnostic::error(
                &f.path,
                pos,
                "DUPLICATE-ID",
                format!(
                    "purpose `{}` is already declared at line {}",
                    p.id, first.line
                ),
                "declare each purpose once",
            ));
        }
    }
    for (table, entries) in [
        ("classifications", &mesh.vocabulary.classifications),
        ("tags", &mesh.vocabulary.tags),
    ] {
        for (word, target) in entries {
            if mesh.vocabulary_target(target).is_none() {
                diags.push(Diagnostic::error(
                    &f.path,
                    loc.at(&[Step::Key("vocabulary"), Step::Key(table), Step::Key(word)]),
                    "MESH-VOCABULARY",
                    format!(
                        "`vocabulary.{table}` maps `{word}` to `{target}`, which is neither a level nor a classification of the taxonomy"
                    ),
                    "map it to `public`, `internal`, `confidential` or `restricted`, or to a classification declared in this file",
                ));
            }
        }
    }
    (diags.error_count() == before).then_some(mesh)
}

fn nearest<'a>(word: &str, options: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    options
        .map(|o| (strsim_distance(word, o), o))
        .filter(|(d, o)| *d <= (o.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

/// Levenshtein distance, for "did you mean" hints.
fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

fn unknown_classification(path: &str, pos: Position, c: &str, mesh: &MeshConfig) -> Diagnostic {
    let hint = match nearest(c, mesh.classifications.iter().map(|x| x.id.as_str())) {
        Some(n) => format!("did you mean `{n}`? Classifications are declared in `mesh.toml`"),
        None => "declare the classification in `mesh.toml`, or use one declared there".into(),
    };
    Diagnostic::error(
        path,
        pos,
        "UNKNOWN-CLASSIFICATION",
        format!("unknown classification `{c}`"),
        hint,
    )
}

/// Two rules of the same specificity (product-scoped, domain-scoped or
/// mesh-wide) that can both apply to one product: neither would win.
fn scopes_overlap(a: &AnonRule, b: &AnonRule) -> bool {
    let meet = |x: &[String], y: &[String]| {
        x.is_empty() == y.is_empty() && (x.is_empty() || x.iter().any(|v| y.contains(v)))
    };
    meet(&a.products, &b.products) && meet(&a.domains, &b.domains)
}

fn unknown_scope<'a>(
    f: &SourceFile,
    pos: Position,
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'a str>,
) -> Diagnostic {
    let hint = match nearest(name, known) {
        Some(n) => format!("did you mean `{n}`?"),
        None => format!("name a {what} described under `products/`, or describe it there"),
    };
    Diagnostic::error(
        &f.path,
        pos,
        "SCOPE-UNKNOWN",
        format!(
            "no product in this repository matches {what} `{name}`; the rule would never apply"
        ),
        hint,
    )
}

fn unknown_purpose(path: &str, pos: Position, p: &str, mesh: &MeshConfig) -> Diagnostic {
    let hint = match nearest(p, mesh.purposes.iter().map(|x| x.id.as_str())) {
        Some(n) => format!("did you mean `{n}`? Purposes are declared in `mesh.toml`"),
        None => "declare the purpose in `mesh.toml`, or use one declared there".into(),
    };
    Diagnostic::error(
        path,
        pos,
        "UNKNOWN-PURPOSE",
        format!("unknown purpose `{p}`"),
        hint,
    )
}
