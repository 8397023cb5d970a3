//! The reports both conformance commands print: text, JSON, JUnit XML,
//! SARIF 2.1.0 or GitHub workflow annotations.

use crate::Failure;
use crate::rules::{self, Finding, Rule};
use meshgov_core::Severity;
use meshgov_core::testing::xml_escape;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Format {
    Text,
    Json,
    Junit,
    Sarif,
    Github,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum FailOn {
    Error,
    Warning,
    Info,
}

impl FailOn {
    fn threshold(self) -> Severity {
        match self {
            FailOn::Error => Severity::Error,
            FailOn::Warning => Severity::Warning,
            FailOn::Info => Severity::Info,
        }
    }
}

/// What one conformance command found, ready to print.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What was checked: the descriptor's path, or the sidecar's URL.
    pub target: String,
    /// The rules the command runs (one JUnit testcase and SARIF rule each).
    pub rules: &'static [Rule],
    pub findings: Vec<Finding>,
    /// Rules that could not run, with why.
    pub skipped: BTreeMap<&'static str, String>,
    /// What was checked, in a sentence (text and JSON).
    pub summary: Option<String>,
    /// The absolute address of `RULES.md` that SARIF's `helpUri`s point
    /// into (`--help-base-url`).
    pub help_base_url: String,
}

impl Report {
    /// The report in `format`; `color` paints the text format's severities.
    pub fn render(&self, format: Format, color: bool, fail_on: FailOn) -> String {
        let threshold = fail_on.threshold();
        let failing = |f: &Finding| f.diag.severity >= threshold;
        match format {
            Format::Text => text_report(self, color),
            Format::Json => json_report(self),
            Format::Junit => junit_report(self, &failing),
            Format::Sarif => sarif_report(self),
            Format::Github => github_report(&self.findings),
        }
    }

    /// Fails with [`Failure::Violations`] when a finding is at or above
    /// `fail_on`.
    pub fn verdict(&self, fail_on: FailOn) -> Result<(), Failure> {
        let threshold = fail_on.threshold();
        let n = self
            .findings
            .iter()
            .filter(|f| f.diag.severity >= threshold)
            .count();
        if n > 0 {
            return Err(Failure::violations(format!(
                "{n} finding(s) at or above `{}`",
                threshold.as_str()
            )));
        }
        Ok(())
    }
}

fn text_report(r: &Report, color: bool) -> String {
    let findings = &r.findings;
    let paint = |s: Severity| -> (&str, &str) {
        match (color, s) {
            (false, _) => ("", ""),
            (true, Severity::Error) => ("\x1b[1;31m", "\x1b[0m"),
            (true, Severity::Warning) => ("\x1b[1;33m", "\x1b[0m"),
            (true, Severity::Info) => ("\x1b[1;36m", "\x1b[0m"),
        }
    };
    let mut out = String::new();
    for f in findings {
        let d = &f.diag;
        let (on, off) = paint(d.severity);
        out.push_str(&format!(
            "{}:{}:{}: {on}{}[{}]{off}: {}\n",
            d.path, d.pos.line, d.pos.col, d.severity, d.rule, d.message
        ));
        if let Some(w) = &f.waived_by {
            out.push_str(&format!("  {w}\n"));
        }
        if !d.hint.is_empty() {
            out.push_str(&format!("  fix: {}\n", d.hint));
        }
        out.push_str(&format!("  see: {}\n", rules::anchor(d.rule)));
    }
    for (rule, why) in &r.skipped {
        out.push_str(&format!("{rule}: not run: {why}\n"));
    }
    if let Some(s) = &r.summary {
        out.push_str(&format!("{s}\n"));
    }
    let count = |s| findings.iter().filter(|f| f.diag.severity == s).count();
    out.push_str(&format!(
        "{} error(s), {} warning(s), {} info\n",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    ));
    out
}

fn json_report(r: &Report) -> String {
    let items: Vec<serde_json::Value> = r
        .findings
        .iter()
        .map(|f| {
            let d = &f.diag;
            serde_json::json!({
                "rule": d.rule,
                "severity": d.severity.as_str(),
                "path": d.path,
                "line": d.pos.line,
                "column": d.pos.col,
                "message": d.message,
                "fix": d.hint,
                "doc": rules::anchor(d.rule),
                "waived_by": f.waived_by,
            })
        })
        .collect();
    let doc = serde_json::json!({ "target": r.target, "findings": items, "not_run": r.skipped, "summary": r.summary });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )
}

/// One testcase per rule and target, named `RULE target`, so CI dashboards
/// track each rule over time.
fn junit_report(r: &Report, failing: &dyn Fn(&Finding) -> bool) -> String {
    let hits_of = |id: &str| -> Vec<&Finding> {
        r.findings
            .iter()
            .filter(|f| f.diag.rule == id && failing(f))
            .collect()
    };
    let failures = r.rules.iter().filter(|x| !hits_of(x.id).is_empty()).count();
    let skipped = r.skipped.len();
    let (n, target) = (r.rules.len(), xml_escape(&r.target));
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"meshgov conformance\" tests=\"{n}\" failures=\"{failures}\" skipped=\"{skipped}\">\n  <testsuite name=\"{target}\" tests=\"{n}\" failures=\"{failures}\" skipped=\"{skipped}\">\n"
    );
    for rule in r.rules {
        let family = rule.id.split('-').next().unwrap_or(rule.id);
        out.push_str(&format!(
            "    <testcase classname=\"conformance.{family}\" name=\"{} {target}\"",
            rule.id
        ));
        let hits = hits_of(rule.id);
        if let Some(first) = hits.first() {
            let body: Vec<String> = hits.iter().map(|f| f.diag.to_string()).collect();
            out.push_str(&format!(
                ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                xml_escape(&first.diag.message),
                xml_escape(&body.join("\n"))
            ));
        } else if let Some(why) = r.skipped.get(rule.id) {
            out.push_str(&format!(
                ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                xml_escape(why)
            ));
        } else {
            out.push_str("/>\n");
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

fn sarif_report(r: &Report) -> String {
    let rules: Vec<serde_json::Value> = r
        .rules
        .iter()
        .map(|x| {
            serde_json::json!({
                "id": x.id,
                "shortDescription": { "text": x.summary },
                "helpUri": x.help_uri(&r.help_base_url),
            })
        })
        .collect();
    let results: Vec<serde_json::Value> = r
        .findings
        .iter()
        .map(|f| {
            let d = &f.diag;
            let text = match &f.waived_by {
                Some(w) => format!("{} ({w}). Fix: {}", d.message, d.hint),
                None => format!("{} Fix: {}", d.message, d.hint),
            };
            serde_json::json!({
                "ruleId": d.rule,
                "ruleIndex": r.rules.iter().position(|x| x.id == d.rule),
                "level": sarif_level(d.severity),
                "message": { "text": text },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": artifact_uri(&d.path) },
                        "region": { "startLine": d.pos.line, "startColumn": d.pos.col },
                    }
                }],
            })
        })
        .collect();
    let doc = serde_json::json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "meshgov conformance",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": env!("CARGO_PKG_REPOSITORY"),
                "rules": rules,
            }},
            "results": results,
        }],
    });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )
}

/// A file path as a SARIF artifact URI (a URI reference): `/` separates
/// segments, and every byte that may not appear in a path segment is
/// percent-encoded (`my product.yaml` → `my%20product.yaml`).
fn artifact_uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.replace('\\', "/").bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GitHub Actions workflow commands: `::error file=…,line=…,col=…::…`.
fn github_report(findings: &[Finding]) -> String {
    let data = |s: &str| {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    };
    let prop = |s: &str| data(s).replace(':', "%3A").replace(',', "%2C");
    let mut out = String::new();
    for f in findings {
        let d = &f.diag;
        let kind = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "notice",
        };
        out.push_str(&format!(
            "::{kind} file={},line={},col={},title={}::{}\n",
            prop(&d.path),
            d.pos.line,
            d.pos.col,
            prop(d.rule),
            data(&format!("{} Fix: {}", d.message, d.hint))
        ));
    }
    out
}
