//! Diagnostics: every problem in a policy file is reported as
//! `path:line:col: severity[RULE-ID]: what is wrong`, followed by a hint that
//! says how to fix it. The checker collects them all instead of stopping at
//! the first, so a guild engineer fixes a repository in one pass.

use std::fmt;

/// How bad a finding is. `Error` blocks check, build and rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A 1-based position in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// One finding, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: String,
    pub pos: Position,
    pub severity: Severity,
    /// A stable id such as `ACCESS-PARSE`; tools and docs key on it.
    pub rule: &'static str,
    pub message: String,
    pub hint: String,
}

impl Diagnostic {
    pub fn error(
        path: impl Into<String>,
        pos: Position,
        rule: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Diagnostic {
            path: path.into(),
            pos,
            severity: Severity::Error,
            rule,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}",
            self.path, self.pos.line, self.pos.col, self.severity, self.rule, self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Maps byte offsets to line and column, once per file.
#[derive(Debug, Clone)]
pub struct LineIndex {
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { line_starts }
    }

    /// The position of byte `offset` in `text`; columns count characters.
    pub fn position(&self, text: &str, offset: usize) -> Position {
        let offset = offset.min(text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let col = text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Position { line, col }
    }
}

/// A list of diagnostics with the helpers the checker needs.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.0
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Sorted by file and position, so output is stable run to run.
    pub fn sorted(mut self) -> Vec<Diagnostic> {
        self.0.sort_by(|a, b| {
            (a.path.as_str(), a.pos, a.rule).cmp(&(b.path.as_str(), b.pos, b.rule))
        });
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_chars() {
        let text = "ab\ncdé\nx";
        let idx = LineIndex::new(text);
        assert_eq!(idx.position(text, 0), Position { line: 1, col: 1 });
        assert_eq!(idx.position(text, 3), Position { line: 2, col: 1 });
        // `x` sits after a two-byte `é`.
        let x = text.find('x').unwrap();
        assert_eq!(idx.position(text, x), Position { line: 3, col: 1 });
        let e = text.find('é').unwrap();
        assert_eq!(idx.position(text, e + 2), Position { line: 2, col: 4 });
    }

    #[test]
    fn display_has_location_rule_and_hint() {
        let d = Diagnostic::error(
            "access/a.cedar",
            Position { line: 3, col: 7 },
            "ACCESS-PARSE",
            "unexpected token",
            "close the `when` block",
        );
        assert_eq!(
            d.to_string(),
            "access/a.cedar:3:7: error[ACCESS-PARSE]: unexpected token\n  hint: close the `when` block"
        );
    }
}

/// A failure to read or write `path`, in words a person reads: what is
/// missing or not allowed, without the operating system's error number.
pub fn io_message(path: impl fmt::Display, e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => format!("`{path}` does not exist"),
        K::PermissionDenied => format!("`{path}` cannot be opened: permission denied"),
        K::IsADirectory => format!("`{path}` is a directory; give a file"),
        K::NotADirectory => format!("`{path}`: a part of the path is a file, not a directory"),
        K::AlreadyExists => format!("`{path}` already exists"),
        _ => {
            let text = e.to_string();
            let words = text.split(" (os error").next().unwrap_or(&text);
            format!("`{path}`: {words}")
        }
    }
}

#[cfg(test)]
mod io_tests {
    use super::io_message;

    #[test]
    fn io_failures_are_said_in_words_without_error_numbers() {
        let missing = std::fs::read("/nonexistent/meshgov/file").unwrap_err();
        assert_eq!(
            io_message("/nonexistent/meshgov/file", &missing),
            "`/nonexistent/meshgov/file` does not exist"
        );
        let dir = std::fs::read("/").unwrap_err();
        let said = io_message("/", &dir);
        assert!(
            said.starts_with("`/`") && !said.contains("os error"),
            "{said}"
        );
    }
}
