//! Rule files: the TOML form of pattern and field rules (`[[rules]]`,
//! `[[fields]]` in a rules file; `[[redaction.rules]]`,
//! `[[redaction.fields]]` in the daemon's configuration), with the line of
//! each rule kept for messages.

use serde::Deserialize;

use super::{err, FieldSpec, RuleSpec, Rules, RulesError, Validator};
use crate::mask::MaskStyle;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    rules: Vec<toml::Spanned<RuleToml>>,
    #[serde(default)]
    fields: Vec<toml::Spanned<FieldToml>>,
}

/// A pattern rule as written in TOML (`[[rules]]` in a rules file,
/// `[[redaction.rules]]` in the daemon's configuration).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleToml {
    /// See [`RuleSpec::name`].
    pub name: String,
    /// See [`RuleSpec::kind`].
    #[serde(default)]
    pub kind: String,
    /// See [`RuleSpec::pattern`].
    pub pattern: String,
    /// `luhn`, `mod97` or `none` (default).
    #[serde(default)]
    pub validator: Option<String>,
    /// See [`RuleSpec::context`].
    #[serde(default)]
    pub context: Vec<String>,
    /// See [`RuleSpec::window`].
    #[serde(default)]
    pub window: usize,
    /// `redact` (default), `stars`, `last4` or `initials`.
    #[serde(default)]
    pub mask: Option<String>,
}

/// A field rule as written in TOML (`[[fields]]`, `[[redaction.fields]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldToml {
    /// See [`FieldSpec::path`].
    pub path: String,
    /// See [`FieldSpec::kind`].
    #[serde(default)]
    pub kind: String,
    /// `redact` (default), `stars`, `last4` or `initials`.
    #[serde(default)]
    pub mask: Option<String>,
}

fn mask_style(s: Option<&str>, line: Option<usize>) -> Result<MaskStyle, RulesError> {
    match s {
        None => Ok(MaskStyle::Redact),
        Some(s) => {
            MaskStyle::parse(s).ok_or_else(|| err(line, format!("unknown mask {s:?} (redact, stars, last4, initials)")))
        }
    }
}

impl RuleToml {
    /// The rule, written at `line`.
    pub fn spec(&self, line: Option<usize>) -> Result<RuleSpec, RulesError> {
        let validator = match self.validator.as_deref() {
            None | Some("none") => Validator::None,
            Some("luhn") => Validator::Luhn,
            Some("mod97") => Validator::Mod97,
            Some(v) => return Err(err(line, format!("unknown validator {v:?} (luhn, mod97, none)"))),
        };
        Ok(RuleSpec {
            name: self.name.clone(),
            kind: self.kind.clone(),
            pattern: self.pattern.clone(),
            validator,
            context: self.context.clone(),
            window: self.window,
            mask: mask_style(self.mask.as_deref(), line)?,
            line,
        })
    }
}

impl FieldToml {
    /// The field rule, written at `line`.
    pub fn spec(&self, line: Option<usize>) -> Result<FieldSpec, RulesError> {
        Ok(FieldSpec {
            path: self.path.clone(),
            kind: self.kind.clone(),
            mask: mask_style(self.mask.as_deref(), line)?,
            line,
        })
    }
}

/// The 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()
        .get(..at.min(text.len()))
        .map_or(0, |b| memchr::memchr_iter(b'\n', b).count())
        + 1
}

/// Parses and compiles a rules file:
///
/// ```toml
/// [[rules]]
/// name = "customer-id"
/// kind = "CUSTOMER_ID"
/// pattern = 'CUST-[0-9]{8}'
/// validator = "luhn"            # or "mod97", "none" (default)
/// context = ["customer", "cust"]
/// window = 32
/// mask = "last4"                # redact (default), stars, last4, initials
///
/// [[fields]]
/// path = "$.customer.dob"
/// kind = "DATE_OF_BIRTH"
/// mask = "stars"
/// ```
pub fn parse_toml(text: &str) -> Result<Rules, RulesError> {
    let (rules, fields) = specs_unchecked(text)?;
    Rules::new(&rules, &fields)
}

/// Parses a rules file into its (not yet compiled) rules, each with its
/// line, to be joined with rules from elsewhere (the daemon's inline
/// `[[redaction.rules]]`).
pub fn specs_from_toml(text: &str) -> Result<(Vec<RuleSpec>, Vec<FieldSpec>), RulesError> {
    let (specs, fields) = specs_unchecked(text)?;
    // Compiled here too, so that an unusable rule is named in this file.
    Rules::new(&specs, &fields)?;
    Ok((specs, fields))
}

fn specs_unchecked(text: &str) -> Result<(Vec<RuleSpec>, Vec<FieldSpec>), RulesError> {
    let file: FileToml = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        err(line, e.message().trim().to_owned())
    })?;
    let specs = file
        .rules
        .iter()
        .map(|r| r.get_ref().spec(Some(line_of(text, r.span().start))))
        .collect::<Result<Vec<_>, _>>()?;
    let fields = file
        .fields
        .iter()
        .map(|f| f.get_ref().spec(Some(line_of(text, f.span().start))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((specs, fields))
}
