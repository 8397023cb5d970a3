//! Policy tests (`tests/*.toml`): requests with expected decisions, field
//! treatments and output records, run through the same evaluation code the
//! sidecar uses.

use crate::access::Principal;
use crate::decision::{Asker, ProductView};
use crate::descriptor::{Descriptor, ProductInfo};
use crate::plugins::PluginSet;
use crate::policies::Policies;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A fixed default time keeps tests reproducible: 2026-01-01T00:00:00Z.
pub const DEFAULT_TEST_TIME: i64 = 1_767_225_600;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Test-only pseudonym keys, by key scope. Never put production keys here.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    #[serde(default)]
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub principal: TestPrincipal,
    /// `read`, `aggregate`, `discover` or `reveal`.
    #[serde(default = "default_action")]
    pub action: String,
    /// The product id, `domain/name`, from `products/`.
    pub product: String,
    pub port: String,
    /// For `reveal`: the field.
    #[serde(default)]
    pub field: Option<String>,
    pub purpose: String,
    /// RFC 3339; defaults to [`DEFAULT_TEST_TIME`].
    #[serde(default)]
    pub time: Option<String>,
    /// `allow` or `deny`.
    pub expect: String,
    /// When given, exactly these policies must be behind the decision.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// Expected treatment per field (`clear`, `revealed`, `hmac`, `mask`, …).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Input records and the exact records expected out (read only). Each
    /// record is a TOML table, or a string of JSON where a `null` is needed.
    #[serde(default)]
    pub input: Vec<RecordSpec>,
    #[serde(default)]
    pub output: Option<Vec<RecordSpec>>,
}

/// A record in a test: a TOML table, or JSON text (TOML has no `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecordSpec {
    Json(String),
    Table(serde_json::Map<String, serde_json::Value>),
}

impl RecordSpec {
    pub fn to_object(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        match self {
            RecordSpec::Table(t) => Ok(t.clone()),
            RecordSpec::Json(text) => serde_json::from_str(text)
                .map_err(|e| format!("record `{text}` is not a JSON object: {e}")),
        }
    }
}

fn records(
    specs: &[RecordSpec],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    specs.iter().map(RecordSpec::to_object).collect()
}

fn default_action() -> String {
    "read".into()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestPrincipal {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub attrs: BTreeMap<String, serde_json::Value>,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    /// Empty when the case passed; otherwise what differed.
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every case of every file, with the bundle's plugins compiled by a
/// host (`meshgov-wasm`), exactly as the sidecar runs them.
pub fn run(
    policies: &Policies,
    plugins: &dyn PluginSet,
    products: &[(String, Descriptor)],
    files: &[(String, TestFile)],
) -> Vec<CaseResult> {
    let views: BTreeMap<String, Result<ProductView, String>> = products
        .iter()
        .map(|(path, d)| {
            (
                d.product_id(),
                ProductInfo::resolve(d, &policies.mesh)
                    .map_err(|e| e.to_string())
                    .and_then(|info| ProductView::new(info, policies))
                    .map_err(|e| format!("{path}: {e}")),
            )
        })
        .collect();
    let mut results = Vec::new();
    for (path, file) in files {
        for case in &file.cases {
            let failures = match views.get(&case.product) {
                None => vec![format!(
                    "unknown product `{}`: add its descriptor to `products/`",
                    case.product
                )],
                Some(Err(e)) => vec![e.clone()],
                Some(Ok(view)) => run_case(policies, plugins, view, &file.keys, case),
            };
            results.push(CaseResult {
                file: path.clone(),
                name: case.name.clone(),
                failures,
            });
        }
    }
    results
}

fn run_case(
    policies: &Policies,
    plugins: &dyn PluginSet,
    view: &ProductView,
    keys: &BTreeMap<String, String>,
    case: &TestCase,
) -> Vec<String> {
    let mut failures = Vec::new();
    let now = match &case.time {
        None => DEFAULT_TEST_TIME,
        Some(t) => {
            match time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
                Ok(t) => t.unix_timestamp(),
                Err(_) => return vec![format!("`time` = `{t}` is not an RFC 3339 timestamp")],
            }
        }
    };
    let expect_allow = match case.expect.as_str() {
        "allow" => true,
        "deny" => false,
        other => {
            return vec![format!(
                "`expect` must be `allow` or `deny`, found `{other}`"
            )];
        }
    };
    if !crate::access::ACTIONS.contains(&case.action.as_str()) {
        return vec![format!(
            "unknown action `{}`; use one of {}",
            case.action,
            crate::access::ACTIONS.join(", ")
        )];
    }
    match (case.action.as_str(), &case.field) {
        ("reveal", None) => return vec!["a `reveal` case needs `field`".into()],
        ("reveal", Some(_)) | (_, None) => {}
        (action, Some(_)) => {
            return vec![format!("`field` applies only to `reveal`, not `{action}`")];
        }
    }
    if case.action != "read"
        && (!case.fields.is_empty() || !case.input.is_empty() || case.output.is_some())
    {
        return vec!["`fields`, `input` and `output` apply only to `read` cases".into()];
    }
    let principal = Principal {
        id: case.principal.id.clone(),
        groups: case.principal.groups.clone(),
        attrs: case.principal.attrs.clone(),
    };
    let who = Asker {
        principal: &principal,
        purpose: &case.purpose,
        now_unix: now,
    };
    let (decision, plan) = if case.action == "read" {
        match policies.decide_read(view, &case.port, who) {
            Ok(plan) => (plan.decision.clone(), Some(plan)),
            Err(e) => return vec![e.to_string()],
        }
    } else {
        match policies.decide(view, &case.action, &case.port, case.field.as_deref(), who) {
            Ok(d) => (d, None),
            Err(e) => return vec![e.to_string()],
        }
    };
    if decision.allowed != expect_allow {
        failures.push(format!(
            "expected {}, got {} (policies: [{}]{})",
            case.expect,
            if decision.allowed { "allow" } else { "deny" },
            decision.policies.join(", "),
            if decision.errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", decision.errors.join("; "))
            }
        ));
    }
    // A deny that comes only from a policy failing to evaluate would pass
    // for the wrong reason. (An undeclared purpose is denied on purpose.)
    if !expect_allow && !decision.errors.is_empty() && policies.mesh.has_purpose(&case.purpose) {
        failures.push(format!(
            "denied only because evaluation failed: {}",
            decision.errors.join("; ")
        ));
    }
    if let Some(expected) = &case.policies {
        let mut expected = expected.clone();
        expected.sort();
        if expected != decision.policies {
            failures.push(format!(
                "expected policies [{}], got [{}]",
                expected.join(", "),
                decision.policies.join(", ")
            ));
        }
    }
    if let Some(plan) = &plan {
        for (field, want) in &case.fields {
            match plan.fields.iter().find(|f| &f.name == field) {
                None => failures.push(format!("field `{field}` is not in the plan")),
                Some(f) if f.treatment.label() != *want => failures.push(format!(
                    "field `{field}`: expected `{want}`, got `{}`",
                    f.treatment.label()
                )),
                Some(_) => {}
            }
        }
        if let Some(expected) = &case.output {
            let (input, expected) = match (records(&case.input), records(expected)) {
                (Ok(i), Ok(e)) => (i, e),
                (Err(e), _) | (_, Err(e)) => return vec![e],
            };
            let keys = match crate::records::KeyRing::from_test_keys(keys) {
                Ok(k) => k,
                Err(e) => return vec![format!("[keys]: {e}")],
            };
            match crate::records::apply_to_values(plan, &keys, plugins, &input) {
                Err(e) => failures.push(e),
                Ok(got) => {
                    if got != expected {
                        failures.push(format!(
                            "output records differ:\n    expected {}\n    got      {}",
                            serde_json::Value::from(
                                expected
                                    .iter()
                                    .cloned()
                                    .map(serde_json::Value::Object)
                                    .collect::<Vec<_>>()
                            ),
                            serde_json::Value::from(
                                got.into_iter()
                                    .map(serde_json::Value::Object)
                                    .collect::<Vec<_>>()
                            ),
                        ));
                    }
                }
            }
        }
    }
    failures
}

/// JUnit XML for CI systems: one testsuite per file, one testcase per case.
pub fn junit(results: &[CaseResult]) -> String {
    let mut by_file: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        by_file.entry(r.file.as_str()).or_default().push(r);
    }
    let failures = results.iter().filter(|r| !r.passed()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"meshgov policy tests\" tests=\"{}\" failures=\"{failures}\">\n",
        results.len()
    );
    for (file, cases) in by_file {
        let f = cases.iter().filter(|r| !r.passed()).count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\">\n",
            xml_escape(file),
            cases.len()
        ));
        for c in cases {
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\"",
                xml_escape(file),
                xml_escape(&c.name)
            ));
            if c.passed() {
                out.push_str("/>\n");
            } else {
                let msg = c.failures.join("\n");
                out.push_str(&format!(
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    xml_escape(c.failures.first().map(String::as_str).unwrap_or("")),
                    xml_escape(&msg)
                ));
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Escapes text for XML attributes and content.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {
                o.push_str(&format!("&#{};", c as u32))
            }
            c => o.push(c),
        }
    }
    o
}
