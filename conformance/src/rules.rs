//! `meshgov conformance check`: the static rules a product descriptor must
//! meet against the mesh's policies, and, given the previous version of the
//! descriptor, the evolution rules. Every rule is listed in [`RULES`] and
//! documented in `conformance/RULES.md` under its id.

use meshgov_core::access::{Principal, ProductEntities};
use meshgov_core::descriptor::{Descriptor, Located, ProductInfo, Property, position_of};
use meshgov_core::diag::{Diagnostic, Position, Severity};
use meshgov_core::mesh::{Classification, Level};
use meshgov_core::policies::Policies;
use meshgov_core::scope;
use meshgov_core::standards::{Check, StandardRule};

/// A built-in rule: its stable id, family and one-line summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub summary: &'static str,
}

impl Rule {
    /// The rule's anchor in `conformance/RULES.md`.
    pub fn anchor(&self) -> String {
        anchor(self.id)
    }

    /// Where the rule is documented online: `base` (the address of
    /// `RULES.md`, e.g. [`DEFAULT_HELP_BASE_URL`]) with the rule's anchor.
    pub fn help_uri(&self, base: &str) -> String {
        format!("{base}#{}", self.id.to_ascii_lowercase())
    }
}

/// The published address of `conformance/RULES.md`, from the workspace's
/// `repository`.
pub const DEFAULT_HELP_BASE_URL: &str = concat!(
    env!("CARGO_PKG_REPOSITORY"),
    "/blob/main/conformance/RULES.md"
);

pub fn anchor(id: &str) -> String {
    format!("conformance/RULES.md#{}", id.to_ascii_lowercase())
}

/// Every rule `conformance check` can report, in documentation order.
pub const RULES: &[Rule] = &[
    Rule {
        id: "SPEC-001",
        summary: "the descriptor is valid YAML in the ODCS v3 shape",
    },
    Rule {
        id: "SPEC-002",
        summary: "the keys ODCS requires are present (`apiVersion` v3, `kind: DataContract`, `id`, `version`, `status`)",
    },
    Rule {
        id: "SPEC-003",
        summary: "names are unique and references resolve (ports, schema objects, fields)",
    },
    Rule {
        id: "SPEC-004",
        summary: "`version` is semantic (`MAJOR.MINOR.PATCH`)",
    },
    Rule {
        id: "META-001",
        summary: "the metadata the standards require is present (owner team, domain, description, SLOs)",
    },
    Rule {
        id: "NAME-001",
        summary: "field names follow the naming standard",
    },
    Rule {
        id: "NAME-002",
        summary: "port names follow the naming standard",
    },
    Rule {
        id: "NAME-003",
        summary: "name suffixes agree with logical types (`_id` → string, `_at` → date)",
    },
    Rule {
        id: "NAME-004",
        summary: "port addresses follow the address standard",
    },
    Rule {
        id: "PRIV-001",
        summary: "every field carries a classification from the mesh taxonomy",
    },
    Rule {
        id: "PRIV-002",
        summary: "every field that needs anonymization has a rule, on every port",
    },
    Rule {
        id: "PRIV-003",
        summary: "privacy settings for the product are within the mesh's global caps",
    },
    Rule {
        id: "PRIV-004",
        summary: "privacy rules name fields the product declares: numeric bounds, group-by fields, the privacy unit",
    },
    Rule {
        id: "SEM-001",
        summary: "federated identifiers are strings, and declared examples match the id format",
    },
    Rule {
        id: "SEM-002",
        summary: "timestamps are ODCS `date`s, and declared examples are RFC 3339 in UTC",
    },
    Rule {
        id: "EVT-001",
        summary: "event ports carry the CloudEvents attributes",
    },
    Rule {
        id: "ACL-001",
        summary: "the Cedar entities this descriptor implies fit the mesh's schema",
    },
    Rule {
        id: "ACL-002",
        summary: "Cedar policies that name this product's ports or fields name ones it declares",
    },
    Rule {
        id: "EVO-001",
        summary: "breaking changes (removed or renamed ports or fields, type changes, tighter `required`) need a major version",
    },
    Rule {
        id: "EVO-002",
        summary: "no governance loosening: no classification downgrade, no anonymization or privacy unit removed",
    },
    Rule {
        id: "EVO-003",
        summary: "the version does not go backwards",
    },
    Rule {
        id: "WAIVER-001",
        summary: "waivers have not expired",
    },
    Rule {
        id: "WAIVER-002",
        summary: "waivers are well formed: a known rule, an owner, a reason and an expiry date",
    },
];

/// Every check `conformance run` makes against a live sidecar, in
/// documentation order.
pub const LIVE_RULES: &[Rule] = &[
    Rule {
        id: "LIVE-001",
        summary: "reads without a valid token are refused with 401: none, malformed, an unknown signing key, expired, another audience, another issuer",
    },
    Rule {
        id: "LIVE-002",
        summary: "reads are decided as the bundle in force decides: allowed consumers get 200, denied ones 403 with no records and no policy ids",
    },
    Rule {
        id: "LIVE-003",
        summary: "classified fields arrive transformed as the bundle says for consumers without `reveal`",
    },
    Rule {
        id: "LIVE-004",
        summary: "no field the descriptor does not declare appears in any answer",
    },
    Rule {
        id: "LIVE-005",
        summary: "the privacy budget is enforced: each grant spends its cost, a query that does not fit is refused with 429 before any noise, and a repeat is free",
    },
    Rule {
        id: "LIVE-006",
        summary: "a tampered bundle is refused (`bad_signature`) and the bundle in force stays",
    },
    Rule {
        id: "LIVE-007",
        summary: "a bundle signed by an untrusted key is refused (`untrusted_key`) and the bundle in force stays",
    },
    Rule {
        id: "LIVE-008",
        summary: "a rolled-back bundle (a lower revision) is refused (`rollback`) and the bundle in force stays",
    },
    Rule {
        id: "LIVE-009",
        summary: "an expired bundle is refused (`expired`) and the bundle in force stays",
    },
    Rule {
        id: "LIVE-010",
        summary: "every request of the run appears in the audit stream with its decision and status",
    },
    Rule {
        id: "LIVE-011",
        summary: "the audit chain verifies: hash links, sequence and signed checkpoints",
    },
    Rule {
        id: "LIVE-012",
        summary: "connects to the SQL port without a valid token are refused with SQLSTATE 28P01 (empty, malformed, an unknown signing key, expired, another audience, another issuer), and a user name other than the token's subject with 28000",
    },
    Rule {
        id: "LIVE-013",
        summary: "over SQL, each consumer's tables hold what their HTTP reads hold: the columns they may see (no withheld or redacted one) with the same treated values and never a raw one, and a port they may not read or aggregate is no table (42P01)",
    },
    Rule {
        id: "LIVE-014",
        summary: "a consumer who may aggregate a port but not read it gets no rows from it over SQL: `SELECT *` is refused with 0A000, and so are raw columns, MIN/MAX, subqueries and filters",
    },
    Rule {
        id: "LIVE-015",
        summary: "the privacy budget is enforced over SQL: each differentially private query's NOTICE shows its cost spent, and one that does not fit is refused with SQLSTATE 53400 and charges nothing",
    },
];

/// Rules a waiver may never silence.
const UNWAIVABLE: &[&str] = &["SPEC-001", "EVO-002", "WAIVER-001", "WAIVER-002"];

/// One descriptor version: its path (as reported) and text.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub path: &'a str,
    pub text: &'a str,
}

/// A finding, with the waiver that downgraded it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub diag: Diagnostic,
    pub waived_by: Option<String>,
}

/// Runs every static rule on `current` (and the evolution rules against
/// `previous`). `today_unix` decides which waivers have expired.
pub fn check_product(
    policies: &Policies,
    current: Input<'_>,
    previous: Option<Input<'_>>,
    today_unix: i64,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let cur = match Descriptor::parse(current.path, current.text) {
        Ok(d) => d,
        Err(d) => {
            out.push(spec_001(d));
            return finish(out, &[]);
        }
    };
    let c = Ctx {
        path: current.path,
        text: current.text,
        d: &cur,
        policies,
    };
    c.spec(&mut out);
    let info = match ProductInfo::resolve_contract(&cur, &policies.mesh) {
        Ok(info) => Some(info),
        Err(e) => {
            out.push(c.diag(e.pos, "SPEC-003", e.message, e.hint));
            None
        }
    };
    for rule in policies.standards.iter().filter(|r| {
        scope::applies(
            &r.domains,
            &r.products,
            cur.domain_name(),
            &cur.product_id(),
        )
    }) {
        c.standard(rule, &mut out);
    }
    c.classified(&mut out);
    if let Some(info) = &info {
        c.anonymized(info, &mut out);
        c.privacy(info, &mut out);
        c.access(info, &mut out);
    }
    if let Some(prev) = previous {
        match Descriptor::parse(prev.path, prev.text) {
            Err(d) => out.push(spec_001(d)),
            Ok(p) => c.evolution(&p, info.as_ref(), &mut out),
        }
    }
    let waivers = c.waivers(today_unix, &mut out);
    finish(out, &waivers)
}

fn spec_001(mut d: Diagnostic) -> Diagnostic {
    d.rule = "SPEC-001";
    d
}

struct Waiver {
    rule: String,
    note: String,
}

fn finish(diags: Vec<Diagnostic>, waivers: &[Waiver]) -> Vec<Finding> {
    let mut out: Vec<Finding> = diags
        .into_iter()
        .map(|mut diag| {
            let waiver = waivers
                .iter()
                .find(|w| w.rule == diag.rule && !UNWAIVABLE.contains(&diag.rule));
            let waived_by = waiver.map(|w| {
                diag.severity = Severity::Info;
                w.note.clone()
            });
            Finding { diag, waived_by }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.diag.path.as_str(), a.diag.pos, a.diag.rule).cmp(&(
            b.diag.path.as_str(),
            b.diag.pos,
            b.diag.rule,
        ))
    });
    out
}

const TOP: Position = Position { line: 1, col: 1 };

struct Ctx<'a> {
    path: &'a str,
    text: &'a str,
    d: &'a Descriptor,
    policies: &'a Policies,
}

fn at(l: &Option<Located>) -> Position {
    l.as_ref().map(position_of).unwrap_or(TOP)
}

/// Fields of the schema object `port` serves, with the port's name.
fn port_fields<'d>(d: &'d Descriptor, port: &str, object: &str) -> Vec<(String, &'d Property)> {
    d.schema_object(object)
        .map(|o| o.properties.iter().map(|p| (port.to_string(), p)).collect())
        .unwrap_or_default()
}

fn major(version: &str) -> Option<u64> {
    semver(version).map(|(m, _, _)| m)
}

fn semver(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let mut num = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        p.parse().ok()
    };
    let v = (num()?, num()?, num()?);
    parts.next().is_none().then_some(v)
}

impl Ctx<'_> {
    fn diag(
        &self,
        pos: Position,
        rule: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::error(self.path, pos, rule, message, hint)
    }

    /// The line of `name: <port>` under `meshgov.outputPorts`, or of the
    /// schema object a default port comes from.
    fn port_pos(&self, port: &str) -> Position {
        let object = self
            .d
            .schema
            .iter()
            .find(|o| o.name.value == port)
            .map(|o| position_of(&o.name));
        let from = self
            .d
            .custom_properties
            .iter()
            .find(|c| c.property.value == "meshgov.outputPorts")
            .map(|c| position_of(&c.property).line);
        let Some(from) = from else {
            return object.unwrap_or(TOP);
        };
        for (i, line) in self.text.lines().enumerate().skip(from) {
            let Some((before, after)) = line.split_once("name:") else {
                continue;
            };
            let value = after.trim().trim_matches(['"', '\'']);
            let is_item_key = before
                .trim_start_matches(' ')
                .trim_start_matches("- ")
                .is_empty();
            if is_item_key && value == port {
                let indent = after.chars().take_while(|c| c.is_whitespace()).count();
                let col = before.chars().count() + "name:".len() + indent + 1;
                return Position { line: i + 1, col };
            }
        }
        object.unwrap_or(TOP)
    }

    fn ports(&self) -> Vec<meshgov_core::descriptor::PortSpec> {
        self.d.ports().unwrap_or_default()
    }

    /// Every (port, property) the product serves.
    fn served(&self) -> Vec<(String, &Property)> {
        self.ports()
            .iter()
            .flat_map(|p| port_fields(self.d, &p.name, p.schema.as_deref().unwrap_or(&p.name)))
            .collect()
    }

    fn spec(&self, out: &mut Vec<Diagnostic>) {
        let d = self.d;
        let missing = |key: &str, hint: &str| {
            self.diag(
                TOP,
                "SPEC-002",
                format!("the descriptor has no `{key}`"),
                hint.to_string(),
            )
        };
        match &d.api_version {
            None => out.push(missing("apiVersion", "add `apiVersion: v3.0.2`")),
            Some(v) if !v.value.starts_with("v3.") => out.push(self.diag(
                position_of(v),
                "SPEC-002",
                format!("`apiVersion` is `{}`; meshgov reads ODCS v3", v.value),
                "set `apiVersion: v3.0.2`",
            )),
            Some(_) => {}
        }
        match &d.kind {
            None => out.push(missing("kind", "add `kind: DataContract`")),
            Some(k) if k.value != "DataContract" => out.push(self.diag(
                position_of(k),
                "SPEC-002",
                format!("`kind` is `{}`, not `DataContract`", k.value),
                "set `kind: DataContract`",
            )),
            Some(_) => {}
        }
        for (value, key, hint) in [
            (&d.id, "id", "add a stable `id`, e.g. the product's name"),
            (&d.version, "version", "add `version: 1.0.0`"),
            (
                &d.status,
                "status",
                "add `status: active` (or `proposed`, `deprecated`, `retired`)",
            ),
        ] {
            if value.as_ref().is_none_or(|v| v.value.trim().is_empty()) {
                out.push(missing(key, hint));
            }
        }
        if let Some(v) = &d.version
            && !v.value.trim().is_empty()
            && semver(&v.value).is_none()
        {
            out.push(self.diag(
                position_of(v),
                "SPEC-004",
                format!("`version` `{}` is not MAJOR.MINOR.PATCH", v.value),
                "use a semantic version such as `2.1.0`; breaking changes bump MAJOR",
            ));
        }
    }

    fn standard(&self, rule: &StandardRule, out: &mut Vec<Diagnostic>) {
        let regex = |p: &Option<String>| p.as_deref().and_then(|p| regex::Regex::new(p).ok());
        let mut push = |pos: Position, id: &'static str, what: String| {
            let mut diag = self.diag(
                pos,
                id,
                format!("{what}: {} [{}]", rule.message, rule.id),
                rule.fix.clone(),
            );
            diag.severity = rule.severity;
            out.push(diag);
        };
        let fields = self.served();
        let matching = |re: &Option<regex::Regex>| -> Vec<&Property> {
            let mut seen: Vec<&Property> = Vec::new();
            for (_, p) in &fields {
                if re.as_ref().is_some_and(|re| re.is_match(&p.name.value))
                    && !seen.iter().any(|s| std::ptr::eq(*s, *p))
                {
                    seen.push(p);
                }
            }
            seen
        };
        let ltype = |p: &Property| p.logical_type.as_ref().map(|t| t.value.clone());
        let ltype_pos = |p: &Property| {
            p.logical_type
                .as_ref()
                .map(position_of)
                .unwrap_or_else(|| position_of(&p.name))
        };
        match rule.check {
            Check::FieldName => {
                if let Some(re) = regex(&rule.pattern) {
                    for p in self.d.schema.iter().flat_map(|o| &o.properties) {
                        if !re.is_match(&p.name.value) {
                            push(
                                position_of(&p.name),
                                "NAME-001",
                                format!("field `{}`", p.name.value),
                            );
                        }
                    }
                }
            }
            Check::PortName => {
                if let Some(re) = regex(&rule.pattern) {
                    for port in self.ports() {
                        if !re.is_match(&port.name) {
                            push(
                                self.port_pos(&port.name),
                                "NAME-002",
                                format!("port `{}`", port.name),
                            );
                        }
                    }
                }
            }
            Check::SuffixType => {
                for p in matching(&regex(&rule.field_pattern)) {
                    if !type_fits(ltype(p).as_deref(), rule.logical_type.as_deref()) {
                        push(
                            ltype_pos(p),
                            "NAME-003",
                            format!(
                                "field `{}` is `{}`",
                                p.name.value,
                                ltype(p).unwrap_or_else(|| "untyped".into())
                            ),
                        );
                    }
                }
            }
            Check::PortAddress => {
                if let Some(re) = regex(&rule.pattern) {
                    for port in self.ports() {
                        let ok = port.address.as_deref().is_some_and(|a| re.is_match(a));
                        if !ok {
                            let what = match &port.address {
                                Some(a) => format!("port `{}` has address `{a}`", port.name),
                                None => format!("port `{}` has no `address`", port.name),
                            };
                            push(self.port_pos(&port.name), "NAME-004", what);
                        }
                    }
                }
            }
            Check::RequiredMetadata => {
                let doc = Descriptor::top_level(self.text);
                for key in &rule.keys {
                    match doc.get(key) {
                        None => push(TOP, "META-001", format!("`{key}` is missing")),
                        Some(v) if is_empty(&v.value) => {
                            push(position_of(v), "META-001", format!("`{key}` is empty"));
                        }
                        Some(_) => {}
                    }
                }
            }
            Check::IdFormat => {
                let values = regex(&rule.pattern);
                for p in matching(&regex(&rule.field_pattern)) {
                    if ltype(p).as_deref() != Some("string") {
                        push(
                            ltype_pos(p),
                            "SEM-001",
                            format!("identifier `{}` is not a string", p.name.value),
                        );
                    }
                    for ex in p.examples.iter().filter_map(|e| e.as_str()) {
                        if values.as_ref().is_some_and(|re| !re.is_match(ex)) {
                            push(
                                position_of(&p.name),
                                "SEM-001",
                                format!("example `{ex}` of `{}`", p.name.value),
                            );
                        }
                    }
                }
            }
            Check::TimestampUtc => {
                for p in matching(&regex(&rule.field_pattern)) {
                    if !type_fits(ltype(p).as_deref(), Some("date")) {
                        push(
                            ltype_pos(p),
                            "SEM-002",
                            format!(
                                "field `{}` is not an ODCS `date` or `timestamp`",
                                p.name.value
                            ),
                        );
                    }
                    for ex in p.examples.iter().filter_map(|e| e.as_str()) {
                        if !is_utc_rfc3339(ex) {
                            push(
                                position_of(&p.name),
                                "SEM-002",
                                format!("example `{ex}` of `{}`", p.name.value),
                            );
                        }
                    }
                }
            }
            Check::CloudEvents => {
                for port in self.ports().iter().filter(|p| p.kind == "events") {
                    let object = port.schema.as_deref().unwrap_or(&port.name);
                    let names: Vec<String> = port_fields(self.d, &port.name, object)
                        .into_iter()
                        .map(|(_, p)| p.name.value.clone())
                        .collect();
                    let missing: Vec<&str> = ["id", "source", "type", "specversion", "time"]
                        .into_iter()
                        .filter(|a| !names.iter().any(|n| n == a))
                        .collect();
                    if !missing.is_empty() {
                        push(
                            self.port_pos(&port.name),
                            "EVT-001",
                            format!("event port `{}` lacks {}", port.name, missing.join(", ")),
                        );
                    }
                }
            }
            // `classified` is the built-in PRIV-001; validator plugins run on
            // records, not on the descriptor.
            Check::Classified | Check::Plugin => {}
        }
    }

    fn classified(&self, out: &mut Vec<Diagnostic>) {
        let mesh = &self.policies.mesh;
        for p in self.d.schema.iter().flat_map(|o| &o.properties) {
            match &p.classification {
                None => out.push(self.diag(
                    position_of(&p.name),
                    "PRIV-001",
                    format!(
                        "field `{}` has no classification; it is withheld from every read",
                        p.name.value
                    ),
                    "add `classification:` with an id from the mesh taxonomy",
                )),
                Some(c) if mesh.classification(&c.value).is_none() => {
                    let known: Vec<&str> =
                        mesh.classifications.iter().map(|x| x.id.as_str()).collect();
                    let conventional = match mesh.classification_level(&c.value) {
                        Some(l) => format!(
                            "`{}` ranks as `{}` when versions are compared, but the sidecar withholds the field; ",
                            c.value,
                            l.as_str()
                        ),
                        None => String::new(),
                    };
                    out.push(self.diag(
                        position_of(c),
                        "PRIV-001",
                        format!("unknown classification `{}`", c.value),
                        format!("{conventional}use one of: {}", known.join(", ")),
                    ));
                }
                Some(_) => {}
            }
        }
    }

    fn anonymized(&self, info: &ProductInfo, out: &mut Vec<Diagnostic>) {
        for (port, p) in self.served() {
            let Some(c) = p.classification.as_ref() else {
                continue;
            };
            let Some(class) = self.policies.mesh.classification(&c.value) else {
                continue;
            };
            if class.level.needs_anonymization()
                && self.policies.anonymization_rule(&c.value, info).is_none()
            {
                out.push(self.diag(
                    position_of(&p.name),
                    "PRIV-002",
                    format!(
                        "field `{}` on port `{port}` is `{}` but no anonymization rule applies; consumers without `reveal` get null",
                        p.name.value, c.value
                    ),
                    format!("ask the guild for a rule for `{}`, or correct the classification", c.value),
                ));
            }
        }
    }

    fn privacy(&self, info: &ProductInfo, out: &mut Vec<Diagnostic>) {
        let caps = &self.policies.mesh.privacy;
        let unit_pos = self
            .d
            .custom_properties
            .iter()
            .find(|c| c.property.value == "meshgov.privacyUnit")
            .map(|c| position_of(&c.property));
        let declared = |name: &str| {
            info.ports
                .iter()
                .flat_map(|p| &p.fields)
                .find(|f| f.name == name)
        };
        for r in self
            .policies
            .privacy
            .iter()
            .filter(|r| scope::applies(&r.domains, &r.products, &info.domain, &info.id))
        {
            let mut over = Vec::new();
            if r.epsilon_budget > caps.max_epsilon_budget {
                over.push(format!(
                    "epsilon_budget {} > {}",
                    r.epsilon_budget, caps.max_epsilon_budget
                ));
            }
            if r.max_epsilon_per_query > caps.max_epsilon_per_query {
                over.push(format!(
                    "max_epsilon_per_query {} > {}",
                    r.max_epsilon_per_query, caps.max_epsilon_per_query
                ));
            }
            if r.delta_budget > caps.max_delta {
                over.push(format!(
                    "delta_budget {} > {}",
                    r.delta_budget, caps.max_delta
                ));
            }
            if !over.is_empty() {
                out.push(self.diag(
                    unit_pos.unwrap_or(TOP),
                    "PRIV-003",
                    format!(
                        "privacy rule `{}` exceeds the mesh caps: {}",
                        r.id,
                        over.join(", ")
                    ),
                    "the guild must lower the rule or raise the caps in `mesh.toml`",
                ));
            }
            let mut missing = Vec::new();
            for field in r.bounds.keys() {
                match declared(field) {
                    None => missing.push(format!("bounded field `{field}` is not declared")),
                    Some(f) if !matches!(f.logical_type.as_deref(), Some("integer" | "number")) => {
                        missing.push(format!("bounded field `{field}` is not numeric"));
                    }
                    Some(_) => {}
                }
            }
            for g in &r.group_by {
                if declared(&g.field).is_none() {
                    missing.push(format!("group-by field `{}` is not declared", g.field));
                }
            }
            if let Some(unit) = &r.privacy_unit_column {
                if declared(unit).is_none() {
                    missing.push(format!("privacy unit `{unit}` is not declared"));
                }
                let named = self
                    .d
                    .custom("meshgov.privacyUnit")
                    .and_then(|v| v.as_str());
                if named != Some(unit.as_str()) {
                    missing.push(format!(
                        "the descriptor's `meshgov.privacyUnit` is {}, the rule counts `{unit}`",
                        named.map_or("absent".to_string(), |n| format!("`{n}`"))
                    ));
                }
            }
            for m in missing {
                out.push(self.diag(
                    unit_pos.unwrap_or(TOP),
                    "PRIV-004",
                    format!("privacy rule `{}`: {m}", r.id),
                    "declare the field (numeric where bounded), or ask the guild to update the rule",
                ));
            }
        }
    }

    fn access(&self, info: &ProductInfo, out: &mut Vec<Diagnostic>) {
        let hint = "the guild's Cedar schema must declare exactly the attributes meshgov builds";
        match ProductEntities::build(info, &self.policies.access) {
            Err(e) => out.push(self.diag(TOP, "ACL-001", e, hint)),
            Ok(entities) => {
                let probe = Principal {
                    id: "probe".into(),
                    groups: vec!["probe".into()],
                    attrs: Default::default(),
                };
                if let Err(e) = entities.with_principal(&probe) {
                    out.push(self.diag(
                        TOP,
                        "ACL-001",
                        format!("a consumer does not fit the schema: {e}"),
                        hint,
                    ));
                }
            }
        }
        let prefix = format!("{}/", info.id);
        for (policy, ty, id) in self.policies.access.resource_references() {
            let Some(rest) = id.strip_prefix(&prefix) else {
                continue;
            };
            let mut parts = rest.splitn(2, '/');
            let port = parts.next().unwrap_or("");
            let field = parts.next();
            let exists = match (ty.as_str(), info.port(port), field) {
                ("OutputPort", Some(_), None) => true,
                ("Field", Some(p), Some(f)) => p.fields.iter().any(|x| x.name == f),
                _ => false,
            };
            if !exists {
                out.push(self.diag(
                    TOP,
                    "ACL-002",
                    format!("Cedar policy `{policy}` names {ty}::\"{id}\", which this descriptor does not declare; it never applies"),
                    "keep port and field names stable, or ask the guild to update the policy",
                ));
            }
        }
    }

    fn evolution(&self, prev: &Descriptor, info: Option<&ProductInfo>, out: &mut Vec<Diagnostic>) {
        let cur = self.d;
        let version = |d: &Descriptor| {
            d.version
                .as_ref()
                .map(|v| v.value.clone())
                .unwrap_or_default()
        };
        let (pv, cv) = (semver(&version(prev)), semver(&version(cur)));
        if let (Some(p), Some(c)) = (pv, cv)
            && c < p
        {
            out.push(self.diag(
                at(&cur.version),
                "EVO-003",
                format!(
                    "`version` went from {} back to {}",
                    version(prev),
                    version(cur)
                ),
                "versions only move forward",
            ));
        }
        let major_bump = match (major(&version(prev)), major(&version(cur))) {
            (Some(p), Some(c)) => c > p,
            _ => false,
        };
        let mut breaking = |pos: Position, what: String| {
            if !major_bump {
                out.push(self.diag(
                    pos,
                    "EVO-001",
                    format!("breaking change without a major version bump: {what}"),
                    format!(
                        "bump `version` to {}.0.0, or keep the old shape",
                        major(&version(prev)).map_or(1, |m| m + 1)
                    ),
                ));
            }
        };
        let cur_ports = self.ports();
        let prev_ports = prev.ports().unwrap_or_default();
        let mut loosening = Vec::new();
        for pp in &prev_ports {
            let Some(cp) = cur_ports.iter().find(|c| c.name == pp.name) else {
                breaking(TOP, format!("port `{}` was removed or renamed", pp.name));
                continue;
            };
            let pobj = pp.schema.as_deref().unwrap_or(&pp.name);
            let cobj = cp.schema.as_deref().unwrap_or(&cp.name);
            let cur_fields = port_fields(cur, &cp.name, cobj);
            for (_, pf) in port_fields(prev, &pp.name, pobj) {
                let Some((_, cf)) = cur_fields
                    .iter()
                    .find(|(_, c)| c.name.value == pf.name.value)
                else {
                    breaking(
                        self.port_pos(&cp.name),
                        format!(
                            "field `{}` was removed from port `{}`",
                            pf.name.value, pp.name
                        ),
                    );
                    continue;
                };
                let ty = |p: &Property| p.logical_type.as_ref().map(|t| t.value.clone());
                if ty(pf) != ty(cf) {
                    breaking(
                        at(&cf.logical_type).max(position_of(&cf.name)),
                        format!(
                            "field `{}` changed type from {} to {}",
                            cf.name.value,
                            ty(pf).unwrap_or_else(|| "untyped".into()),
                            ty(cf).unwrap_or_else(|| "untyped".into())
                        ),
                    );
                }
                if cf.required && !pf.required {
                    breaking(
                        position_of(&cf.name),
                        format!("field `{}` became required", cf.name.value),
                    );
                }
                if let Some(why) = self.loosened(pf, cf, info) {
                    loosening.push((position_of(&cf.name), why));
                }
            }
        }
        let unit = |d: &Descriptor| {
            d.custom("meshgov.privacyUnit")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        if let Some(pu) = unit(prev)
            && unit(cur).as_deref() != Some(pu.as_str())
        {
            loosening.push((
                TOP,
                format!("the privacy unit `{pu}` was removed or changed"),
            ));
        }
        for (pos, why) in loosening {
            out.push(self.diag(
                pos,
                "EVO-002",
                format!("governance loosening: {why}"),
                "restore the previous classification or privacy unit; loosening needs the guild, not a version bump",
            ));
        }
    }

    /// How sensitive a field is, in the mesh's order: its classification's
    /// level (from the taxonomy or the ODCS vocabulary in `mesh.toml`),
    /// raised by its tags. `None` when the classification is missing or
    /// means nothing to the mesh: the sidecar withholds such a field, the
    /// strictest there is.
    fn sensitivity(&self, p: &Property) -> Option<(String, Level)> {
        let mesh = &self.policies.mesh;
        let class = p.classification.as_ref()?;
        let tags = p.tag_names().filter_map(|t| mesh.tag_level(t));
        let level = tags.fold(mesh.classification_level(&class.value)?, Level::max);
        Some((class.value.clone(), level))
    }

    /// How `cur` protects less than `prev`, if it does.
    fn loosened(
        &self,
        prev: &Property,
        cur: &Property,
        product: Option<&ProductInfo>,
    ) -> Option<String> {
        let mesh = &self.policies.mesh;
        let mut why = Vec::new();
        if let (Some((pc, pl)), Some((cc, cl))) = (self.sensitivity(prev), self.sensitivity(cur))
            && cl < pl
        {
            why.push(format!(
                "was downgraded from `{pc}` ({}) to `{cc}` ({})",
                pl.as_str(),
                cl.as_str()
            ));
        }
        let lost: Vec<String> = prev
            .tag_names()
            .filter(|t| mesh.tag_level(t).is_some())
            .filter(|t| !cur.tag_names().any(|c| c.eq_ignore_ascii_case(t)))
            .map(|t| format!("`{t}`"))
            .collect();
        if !lost.is_empty() {
            why.push(format!("lost the tag {}", lost.join(", ")));
        }
        let class = |p: &Property| {
            p.classification
                .as_ref()
                .and_then(|c| mesh.classification(&c.value))
        };
        if let (Some(pc), Some(cc)) = (class(prev), class(cur)) {
            if pc.direct_identifier && !cc.direct_identifier {
                why.push("is no longer marked a direct identifier".to_string());
            }
            if let Some(product) = product {
                let rule = |c: &Classification| {
                    c.level.needs_anonymization()
                        && self.policies.anonymization_rule(&c.id, product).is_some()
                };
                if rule(pc) && !rule(cc) && cc.level.needs_anonymization() {
                    why.push(format!(
                        "lost its anonymization (`{}` → `{}`)",
                        pc.id, cc.id
                    ));
                }
            }
        }
        (!why.is_empty()).then(|| format!("field `{}` {}", cur.name.value, why.join("; ")))
    }

    fn waivers(&self, today_unix: i64, out: &mut Vec<Diagnostic>) -> Vec<Waiver> {
        let Some(prop) = self
            .d
            .custom_properties
            .iter()
            .find(|c| c.property.value == "meshgov.waivers")
        else {
            return Vec::new();
        };
        let pos = position_of(&prop.property);
        let bad = |why: String| {
            self.diag(
                pos,
                "WAIVER-002",
                why,
                "write each waiver as `{rule: NAME-001, owner: team@example, reason: …, expires: 2026-12-31}`",
            )
        };
        let Some(list) = prop.value.as_array() else {
            out.push(bad("`meshgov.waivers` must be a list".into()));
            return Vec::new();
        };
        let mut waivers = Vec::new();
        for (i, w) in list.iter().enumerate() {
            let field = |k: &str| {
                w.get(k)
                    .and_then(|v| v.as_str())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
            };
            let (Some(rule), Some(owner), Some(reason), Some(expires)) = (
                field("rule"),
                field("owner"),
                field("reason"),
                field("expires"),
            ) else {
                out.push(bad(format!(
                    "waiver {} needs `rule`, `owner`, `reason` and `expires`",
                    i + 1
                )));
                continue;
            };
            if !RULES.iter().any(|r| r.id == rule) || UNWAIVABLE.contains(&rule) {
                out.push(bad(format!(
                    "waiver {}: `{rule}` is not a rule that can be waived",
                    i + 1
                )));
                continue;
            }
            let Some(until) = date_end_unix(expires) else {
                out.push(bad(format!(
                    "waiver {}: `expires` `{expires}` is not a YYYY-MM-DD date",
                    i + 1
                )));
                continue;
            };
            if until <= today_unix {
                out.push(self.diag(
                    pos,
                    "WAIVER-001",
                    format!("the waiver of {rule} owned by {owner} expired on {expires}"),
                    "fix the finding, or renew the waiver with a new date and reason",
                ));
                continue;
            }
            waivers.push(Waiver {
                rule: rule.to_string(),
                note: format!("waived by {owner} until {expires}: {reason}"),
            });
        }
        waivers
    }
}

/// The first second after the end of `YYYY-MM-DD` (UTC): a waiver is valid
/// through its expiry date.
fn date_end_unix(date: &str) -> Option<i64> {
    let mut parts = date.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let month = time::Month::try_from(month).ok()?;
    let d = time::Date::from_calendar_date(year, month, day).ok()?;
    Some(d.next_day()?.midnight().assume_utc().unix_timestamp())
}

/// Whether a field of logical type `actual` meets the `expected` one. ODCS
/// v3.1 split v3.0's `date` into `date`, `timestamp` and `time`; a
/// `timestamp` is the point in time v3.0 wrote as a `date`.
fn type_fits(actual: Option<&str>, expected: Option<&str>) -> bool {
    actual == expected || (expected == Some("date") && actual == Some("timestamp"))
}

/// Null, blank text, and empty lists and maps say nothing: metadata
/// written that way is missing.
fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::String(s) => s.trim().is_empty(),
        serde_json::Value::Array(a) => a.iter().all(is_empty),
        serde_json::Value::Object(o) => o.values().all(is_empty),
        serde_json::Value::Bool(_) | serde_json::Value::Number(_) => false,
    }
}

fn is_utc_rfc3339(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .is_ok_and(|t| t.offset().is_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_parses_strictly() {
        assert_eq!(semver("2.1.0"), Some((2, 1, 0)));
        assert_eq!(semver("2.1.0-rc.1+b5"), Some((2, 1, 0)));
        assert_eq!(semver("2.1"), None);
        assert_eq!(semver("02.1.0"), None);
        assert_eq!(semver("2.1.0.4"), None);
    }

    #[test]
    fn waiver_dates_run_through_the_day() {
        let end = date_end_unix("2026-01-01").unwrap_or(0);
        assert_eq!(end, 1_767_225_600 + 86_400);
        assert_eq!(date_end_unix("2026-13-01"), None);
    }

    #[test]
    fn utc_timestamps_only() {
        assert!(is_utc_rfc3339("2026-01-31T12:00:00Z"));
        assert!(!is_utc_rfc3339("2026-01-31T12:00:00+02:00"));
        assert!(!is_utc_rfc3339("2026-01-31"));
    }
}
