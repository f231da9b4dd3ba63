//! Diagnostics shared by every config stage: where a problem is (file,
//! document, resource, field path) and what it is.
//!
//! `ingressd check` prints them, the daemon logs them, and the analyzer adds
//! warnings to the same list, so a person sees one format everywhere:
//!
//! ```text
//! error: config/vs.yaml[0]: virtualservice default/counter: spec.http[0].match[1].uri.regex: invalid regex ...
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The config still applies; something is probably not what was meant.
    Warning,
    /// The resource (or the whole config) is rejected.
    Error,
}

/// Where a resource came from: a file and the index of the YAML document in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub document: Option<usize>,
}

impl Source {
    pub fn new(file: impl Into<PathBuf>, document: usize) -> Self {
        Self {
            file: Some(file.into()),
            document: Some(document),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.document) {
            (Some(file), Some(doc)) => write!(f, "{}[{doc}]", file.display()),
            (Some(file), None) => write!(f, "{}", file.display()),
            (None, _) => f.write_str("<inline>"),
        }
    }
}

/// One finding about the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub source: Source,
    /// `kind namespace/name`, lower-case kind, e.g. `virtualservice default/counter`.
    pub resource: Option<String>,
    /// Field path inside the resource, e.g. `spec.http[0].match[1].uri.regex`.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(source: &Source, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            source: source.clone(),
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn warning(source: &Source, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(source, message)
        }
    }

    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{severity}: {}", self.source)?;
        if let Some(resource) = &self.resource {
            write!(f, ": {resource}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// An ordered collection of diagnostics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
