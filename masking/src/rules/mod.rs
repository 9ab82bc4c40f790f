//! Rules of the operator's own: pattern rules (internal customer ids,
//! employee numbers, partner references) and field rules (JSON paths or
//! key names whose values are always masked), added to the built-in
//! detectors of [`redact`](crate::redact).
//!
//! # Pattern rules
//! A pattern (the `regex` crate's syntax and engine, `regex-automata`'s
//! meta regex: finite automata, no backtracking), an optional validator
//! (`luhn`, `mod97`), optional context words that must appear within
//! `window` bytes before or after the match (ASCII case-insensitive), a
//! kind name and a [`MaskStyle`].
//!
//! # Field rules
//! `path = "$.customer.dob"` (a JSON path from the root: `.key` segments,
//! `*` for any one key, arrays transparent) or `path = "*.addressLine1"` /
//! `"addressLine1"` (that key anywhere: in JSON, `key=value`, `key: value`).
//!
//! # Cost
//! Every pattern rule and key-name field rule is compiled into one
//! multi-pattern automaton, searched once over the text; JSON paths are
//! followed by one pass over each JSON object. The search is linear in the
//! text: the first search is a plain one (a single pass when nothing
//! matches); after a match, each search reads from the last match on to
//! the earliest end of the next one, then at most [`MAX_OVERRUN`] bytes
//! further to find where that match really ends (a match cannot extend
//! further than that), so a
//! pattern that could run on (`a*b|a`) costs at most that much per match,
//! never a rescan to the end of the text. Bounds: [`MAX_RULES`] pattern rules,
//! [`MAX_FIELDS`] field rules, [`MAX_PATTERN_BYTES`] per pattern, and the
//! compiled automaton at most [`MAX_NFA_BYTES`].
//!
//! Rule files are TOML (see [`parse_toml`]); an error names its line.

use memchr::memmem;
use regex_automata::meta::Regex;
use regex_automata::{Input, MatchKind};

use crate::mask::MaskStyle;
use crate::{iban, luhn, Kind};

mod file;
pub use file::{line_of, parse_toml, specs_from_toml, FieldToml, RuleToml};

/// Most pattern rules in one rule set.
pub const MAX_RULES: usize = 256;
/// Most field rules in one rule set.
pub const MAX_FIELDS: usize = 256;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Largest compiled automaton for all the patterns together.
pub const MAX_NFA_BYTES: usize = 4 << 20;
/// How far past the earliest end of a match the search looks for its real
/// end: matches of pattern rules are cut there.
pub const MAX_OVERRUN: usize = 256;
/// Widest context window, in bytes each side.
pub const MAX_WINDOW: usize = 256;
/// Most context words per rule, and their longest length.
pub const MAX_CONTEXT_WORDS: usize = 32;
const MAX_CONTEXT_WORD_BYTES: usize = 32;
/// Deepest JSON nesting followed for path rules.
const MAX_JSON_DEPTH: usize = 64;

/// A validator a pattern rule's match must pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Validator {
    /// None: the pattern decides.
    #[default]
    None,
    /// The Luhn check digit over the match's digits.
    Luhn,
    /// ISO 7064 mod 97-10 over the match's letters and digits, as IBANs
    /// compute it (the first four characters moved to the end).
    Mod97,
}

impl Validator {
    fn check(self, v: &[u8]) -> bool {
        match self {
            Validator::None => true,
            Validator::Luhn => luhn::is_valid(v),
            Validator::Mod97 => {
                let compact: Vec<u8> = v
                    .iter()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .map(u8::to_ascii_uppercase)
                    .collect();
                compact.len() >= 5 && iban::mod97_is_one(&compact)
            }
        }
    }
}

/// One pattern rule, as written by the operator.
#[derive(Clone, Debug, Default)]
pub struct RuleSpec {
    /// A name for messages and explain mode (`customer-id`).
    pub name: String,
    /// The kind reported: a built-in kind name (`PAN`, `NAME`…) or the
    /// operator's own (`EMPLOYEE_ID`), upper-case letters, digits and `_`.
    pub kind: String,
    /// The pattern (regex crate syntax).
    pub pattern: String,
    /// A validator the match must pass.
    pub validator: Validator,
    /// Words one of which must be near the match (none: no condition).
    pub context: Vec<String>,
    /// How many bytes each side of the match are searched for a context
    /// word (default 48, at most [`MAX_WINDOW`]).
    pub window: usize,
    /// How the match is masked.
    pub mask: MaskStyle,
    /// Where the rule was written (1-based line), for messages.
    pub line: Option<usize>,
}

/// One field rule, as written by the operator.
#[derive(Clone, Debug, Default)]
pub struct FieldSpec {
    /// `$.customer.dob`, `*.addressLine1` or `addressLine1`.
    pub path: String,
    /// The kind reported (as [`RuleSpec::kind`]; default `CUSTOM`).
    pub kind: String,
    /// How the value is masked.
    pub mask: MaskStyle,
    /// Where the rule was written (1-based line), for messages.
    pub line: Option<usize>,
}

/// A rule that cannot be used, with the line it was written on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct RulesError {
    /// 1-based line of the rule, when known.
    pub line: Option<usize>,
    /// What is wrong (never contains text being redacted).
    pub message: String,
}

fn err(line: Option<usize>, message: impl Into<String>) -> RulesError {
    RulesError {
        line,
        message: message.into(),
    }
}

struct CompiledRule {
    name: String,
    kind: Kind,
    kind_name: String,
    validator: Validator,
    context: Vec<Vec<u8>>,
    window: usize,
    mask: MaskStyle,
}

enum FieldMatch {
    /// The key anywhere (searched by the automaton).
    Key,
    /// Key segments from the JSON root; `None` is `*`.
    Path(Vec<Option<Vec<u8>>>),
}

struct CompiledField {
    path: String,
    kind: Kind,
    kind_name: String,
    mask: MaskStyle,
    how: FieldMatch,
}

/// A compiled, validated rule set. [`Rules::default`] is empty.
#[derive(Default)]
pub struct Rules {
    rules: Vec<CompiledRule>,
    fields: Vec<CompiledField>,
    /// Pattern `i < rules.len()` is rule `i`; after that, the key-name
    /// field rules in order, through `key_fields`.
    re: Option<Regex>,
    key_fields: Vec<u16>,
    has_paths: bool,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("rules", &self.rules.len())
            .field("fields", &self.fields.len())
            .finish()
    }
}

fn parse_kind(kind: &str, line: Option<usize>) -> Result<(Kind, String), RulesError> {
    let k = if kind.is_empty() { "CUSTOM" } else { kind };
    if k.len() > 32
        || !k
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
    {
        return Err(err(line, "kind must be 1-32 upper-case letters, digits or _"));
    }
    Ok((k.parse().unwrap_or(Kind::Custom), k.to_owned()))
}

/// `key` as a regex matching it literally.
fn literal(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 2);
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:x}}}", u32::from(c)));
        }
    }
    out
}

impl Rules {
    /// Compiles pattern and field rules; the first unusable one is refused
    /// with its line.
    pub fn new(specs: &[RuleSpec], fields: &[FieldSpec]) -> Result<Self, RulesError> {
        if specs.len() > MAX_RULES {
            return Err(err(None, format!("at most {MAX_RULES} pattern rules")));
        }
        if fields.len() > MAX_FIELDS {
            return Err(err(None, format!("at most {MAX_FIELDS} field rules")));
        }
        let mut patterns: Vec<String> = Vec::new();
        let mut rules = Vec::with_capacity(specs.len());
        for s in specs {
            let line = s.line;
            if s.name.is_empty() || s.name.len() > 64 {
                return Err(err(line, "a rule needs a name of 1-64 bytes"));
            }
            if s.pattern.len() > MAX_PATTERN_BYTES {
                return Err(err(
                    line,
                    format!("rule {:?}: pattern longer than {MAX_PATTERN_BYTES} bytes", s.name),
                ));
            }
            let re = Regex::builder()
                .configure(Regex::config().nfa_size_limit(Some(MAX_NFA_BYTES)))
                .build(&s.pattern)
                .map_err(|e| err(line, format!("rule {:?}: pattern does not compile: {e}", s.name)))?;
            let hir = regex_automata::util::syntax::parse(&s.pattern)
                .map_err(|e| err(line, format!("rule {:?}: pattern does not compile: {e}", s.name)))?;
            drop(re);
            if hir.properties().minimum_len().unwrap_or(0) == 0 {
                return Err(err(
                    line,
                    format!("rule {:?}: pattern matches the empty string", s.name),
                ));
            }
            if s.context.len() > MAX_CONTEXT_WORDS
                || s.context
                    .iter()
                    .any(|w| w.is_empty() || w.len() > MAX_CONTEXT_WORD_BYTES)
            {
                return Err(err(
                    line,
                    format!(
                        "rule {:?}: at most {MAX_CONTEXT_WORDS} context words of 1-{MAX_CONTEXT_WORD_BYTES} bytes",
                        s.name
                    ),
                ));
            }
            if s.window > MAX_WINDOW {
                return Err(err(line, format!("rule {:?}: window at most {MAX_WINDOW}", s.name)));
            }
            let (kind, kind_name) = parse_kind(&s.kind, line)?;
            patterns.push(s.pattern.clone());
            rules.push(CompiledRule {
                name: s.name.clone(),
                kind,
                kind_name,
                validator: s.validator,
                context: s.context.iter().map(|w| w.to_ascii_lowercase().into_bytes()).collect(),
                window: if s.window == 0 { 48 } else { s.window },
                mask: s.mask,
            });
        }
        let mut compiled_fields = Vec::with_capacity(fields.len());
        let mut key_fields = Vec::new();
        let mut has_paths = false;
        for (i, f) in fields.iter().enumerate() {
            let line = f.line;
            let (kind, kind_name) = parse_kind(&f.kind, line)?;
            let p = f.path.as_str();
            let bad = || {
                err(
                    line,
                    format!("field {p:?}: a path is $.a.b (with * for any key) or a key name"),
                )
            };
            let seg_ok =
                |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_graphic() && c != b'.');
            let how = if let Some(rest) = p.strip_prefix("$.") {
                let mut segs = Vec::new();
                for seg in rest.split('.') {
                    // arrays are transparent: `items[*]`, `items[0]`
                    let seg = seg.split('[').next().unwrap_or(seg);
                    if !seg_ok(seg) {
                        return Err(bad());
                    }
                    segs.push((seg != "*").then(|| seg.as_bytes().to_vec()));
                }
                has_paths = true;
                FieldMatch::Path(segs)
            } else {
                let key = p.strip_prefix("*.").unwrap_or(p);
                if !seg_ok(key) || key == "*" {
                    return Err(bad());
                }
                // `"key": value`, `key=value`, `key: value`, `'key' => value`
                patterns.push(format!("(?-u:\\b){}[\"']?[ \\t]*(?:=>|=|:)[ \\t]*", literal(key)));
                key_fields.push(u16::try_from(i).map_err(|_| bad())?);
                FieldMatch::Key
            };
            compiled_fields.push(CompiledField {
                path: f.path.clone(),
                kind,
                kind_name,
                mask: f.mask,
                how,
            });
        }
        let re = if patterns.is_empty() {
            None
        } else {
            Some(
                Regex::builder()
                    .configure(
                        Regex::config()
                            .match_kind(MatchKind::LeftmostFirst)
                            .nfa_size_limit(Some(MAX_NFA_BYTES))
                            .hybrid_cache_capacity(8 << 20),
                    )
                    .build_many(&patterns)
                    .map_err(|e| err(None, format!("the rules together are too large to compile: {e}")))?,
            )
        };
        Ok(Rules {
            rules,
            fields: compiled_fields,
            re,
            key_fields,
            has_paths,
        })
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.fields.is_empty()
    }

    /// Number of pattern rules and field rules.
    pub fn len(&self) -> (usize, usize) {
        (self.rules.len(), self.fields.len())
    }

    /// For explain mode: the kind name and rule name behind a finding's
    /// rule (`("EMPLOYEE_ID", "rule:employee-id")`), or `None` for a
    /// built-in detector.
    pub fn describe(&self, rule: crate::detect::Rule) -> Option<(&str, String)> {
        use crate::detect::Rule;
        match rule {
            Rule::Custom(i) => self
                .rules
                .get(usize::from(i))
                .map(|r| (r.kind_name.as_str(), format!("rule:{}", r.name))),
            Rule::Field(i) => self
                .fields
                .get(usize::from(i))
                .map(|f| (f.kind_name.as_str(), format!("field:{}", f.path))),
            Rule::Builtin(_) => None,
        }
    }

    /// Runs every rule over `text`, handing each finding to `found` as
    /// `(start, end, kind, rule, style)`. `stop` is asked every
    /// [`STOP_CHECK_BYTES`](crate::detect::STOP_CHECK_BYTES); returns
    /// `false` when it said to stop.
    pub(crate) fn scan(
        &self,
        text: &str,
        stop: &dyn Fn() -> bool,
        found: &mut dyn FnMut(usize, usize, Kind, crate::detect::Rule, MaskStyle),
    ) -> bool {
        use crate::detect::Rule;
        let b = text.as_bytes();
        let n = b.len();
        if let Some(re) = &self.re {
            let mut pos = 0usize;
            let mut next_check = crate::detect::STOP_CHECK_BYTES;
            while pos < n {
                if pos >= next_check {
                    if stop() {
                        return false;
                    }
                    next_check = pos + crate::detect::STOP_CHECK_BYTES;
                }
                // The first search is a plain one (one pass when nothing
                // matches, the usual case, and the fastest); after a match,
                // searches are bounded as the module docs say, so matches
                // that could run on are not rescanned to the end each time.
                let (m, e0) = if pos == 0 {
                    let Some(m) = re.find(Input::new(b)) else {
                        break;
                    };
                    (m, m.end())
                } else {
                    let Some(first) = re.search_half(&Input::new(b).range(pos..).earliest(true)) else {
                        break;
                    };
                    let e0 = first.offset();
                    let limit = (e0 + MAX_OVERRUN).min(n);
                    let Some(m) = re.find(Input::new(b).range(pos..limit)) else {
                        pos = e0.max(pos + 1);
                        continue;
                    };
                    (m, e0)
                };
                let (s, e) = (m.start(), m.end());
                let id = m.pattern().as_usize();
                let mut resume = e;
                if let Some(r) = self.rules.get(id) {
                    if self.rule_accepts(r, b, s, e) {
                        found(s, e, r.kind, Rule::Custom(id as u16), r.mask);
                    }
                } else if let Some(&fi) = self.key_fields.get(id - self.rules.len()) {
                    if let Some(f) = self.fields.get(usize::from(fi)) {
                        let (vs, ve) = value_span(b, e);
                        if ve > vs && !is_null(b.get(vs..ve).unwrap_or(&[])) {
                            found(vs, ve, f.kind, Rule::Field(fi), f.mask);
                        }
                        resume = ve;
                    }
                }
                pos = resume.max(e0).max(pos + 1);
            }
        }
        if self.has_paths {
            let mut i = 0usize;
            while let Some(off) = memchr::memchr(b'{', b.get(i..).unwrap_or(&[])) {
                let s = i + off;
                i = self.walk_json(b, s, found).max(s + 1);
            }
        }
        true
    }

    fn rule_accepts(&self, r: &CompiledRule, b: &[u8], s: usize, e: usize) -> bool {
        let Some(v) = b.get(s..e) else {
            return false;
        };
        if !r.validator.check(v) {
            return false;
        }
        if r.context.is_empty() {
            return true;
        }
        let lo = s.saturating_sub(r.window);
        let hi = (e + r.window).min(b.len());
        let mut buf = [0u8; 2 * MAX_WINDOW];
        for (side, (a, z)) in [(lo, s), (e, hi)].into_iter().enumerate() {
            let src = b.get(a..z).unwrap_or(&[]);
            let dst = buf.get_mut(side * MAX_WINDOW..side * MAX_WINDOW + src.len());
            if let Some(dst) = dst {
                for (d, c) in dst.iter_mut().zip(src) {
                    *d = c.to_ascii_lowercase();
                }
            }
        }
        let before = buf.get(..s - lo).unwrap_or(&[]);
        let after = buf.get(MAX_WINDOW..MAX_WINDOW + (hi - e)).unwrap_or(&[]);
        r.context
            .iter()
            .any(|w| memmem::find(before, w).is_some() || memmem::find(after, w).is_some())
    }

    /// The field rule (index) whose path is the current JSON path.
    fn path_match(&self, b: &[u8], keys: &[(usize, usize)]) -> Option<u16> {
        self.fields.iter().enumerate().find_map(|(i, f)| {
            let FieldMatch::Path(segs) = &f.how else {
                return None;
            };
            let ok = segs.len() == keys.len()
                && segs.iter().zip(keys).rev().all(|(seg, &(ks, ke))| match seg {
                    None => true,
                    Some(want) => b.get(ks..ke) == Some(want.as_slice()),
                });
            ok.then_some(i as u16)
        })
    }

    /// Follows the JSON object at `s` (`b[s] == b'{'`), reporting values at
    /// field-rule paths; returns where it stopped (the end of the object,
    /// or the byte that is not JSON).
    fn walk_json(
        &self,
        b: &[u8],
        s: usize,
        found: &mut dyn FnMut(usize, usize, Kind, crate::detect::Rule, MaskStyle),
    ) -> usize {
        use crate::detect::Rule;
        #[derive(PartialEq)]
        enum St {
            Value,
            KeyOrEnd,
            ValueOrEnd,
            Colon,
            CommaOrEnd,
        }
        // (is object, current key span)
        let mut frames: Vec<(bool, (usize, usize))> = Vec::new();
        let mut keys: Vec<(usize, usize)> = Vec::new();
        let mut masked: Option<(usize, usize, u16)> = None;
        let mut st = St::Value;
        let mut i = s;
        let at = |i: usize| b.get(i).copied().unwrap_or(0);
        let report = |found: &mut dyn FnMut(usize, usize, Kind, Rule, MaskStyle), vs: usize, ve: usize, fi: u16| {
            if let Some(f) = self.fields.get(usize::from(fi)) {
                found(vs, ve, f.kind, Rule::Field(fi), f.mask);
            }
        };
        loop {
            while matches!(at(i), b' ' | b'\t' | b'\r' | b'\n') {
                i += 1;
            }
            let c = at(i);
            if i >= b.len() {
                return i;
            }
            match st {
                St::Value | St::ValueOrEnd => {
                    if st == St::ValueOrEnd && c == b']' {
                        // an empty array: closed below
                    } else {
                        keys.clear();
                        keys.extend(frames.iter().filter(|f| f.0).map(|f| f.1));
                        let field = if masked.is_none() && !frames.is_empty() {
                            self.path_match(b, &keys)
                        } else {
                            None
                        };
                        match c {
                            b'{' | b'[' => {
                                if frames.len() >= MAX_JSON_DEPTH {
                                    return i;
                                }
                                if let Some(fi) = field {
                                    masked = Some((frames.len(), i, fi));
                                }
                                frames.push((c == b'{', (0, 0)));
                                st = if c == b'{' { St::KeyOrEnd } else { St::ValueOrEnd };
                                i += 1;
                                continue;
                            }
                            b'"' => {
                                let Some(e) = string_end(b, i) else {
                                    return i;
                                };
                                if let Some(fi) = field {
                                    if e > i + 1 {
                                        report(found, i + 1, e, fi);
                                    }
                                }
                                i = e + 1;
                            }
                            _ if c.is_ascii_alphanumeric() || c == b'-' => {
                                let mut e = i;
                                while at(e).is_ascii_alphanumeric() || matches!(at(e), b'.' | b'+' | b'-') {
                                    e += 1;
                                }
                                if let Some(fi) = field {
                                    if !is_null(b.get(i..e).unwrap_or(&[])) {
                                        report(found, i, e, fi);
                                    }
                                }
                                i = e;
                            }
                            _ => return i,
                        }
                        if frames.is_empty() {
                            return i;
                        }
                        st = St::CommaOrEnd;
                        continue;
                    }
                }
                St::KeyOrEnd if c == b'"' => {
                    let Some(e) = string_end(b, i) else {
                        return i;
                    };
                    if let Some(f) = frames.last_mut() {
                        f.1 = (i + 1, e);
                    }
                    i = e + 1;
                    st = St::Colon;
                    continue;
                }
                St::KeyOrEnd if c == b'}' => {}
                St::Colon if c == b':' => {
                    i += 1;
                    st = St::Value;
                    continue;
                }
                St::CommaOrEnd if c == b',' => {
                    i += 1;
                    st = if frames.last().is_some_and(|f| f.0) {
                        St::KeyOrEnd
                    } else {
                        St::Value
                    };
                    continue;
                }
                St::CommaOrEnd if matches!(c, b'}' | b']') => {}
                _ => return i,
            }
            // A closing bracket, matching the open frame.
            let Some((obj, _)) = frames.pop() else {
                return i;
            };
            if obj != (c == b'}') {
                return i;
            }
            if let Some((d, start, fi)) = masked {
                if frames.len() == d {
                    report(found, start, i + 1, fi);
                    masked = None;
                }
            }
            i += 1;
            if frames.is_empty() {
                return i;
            }
            st = St::CommaOrEnd;
        }
    }
}

fn is_null(v: &[u8]) -> bool {
    matches!(v, b"null" | b"None" | b"nil" | b"undefined" | b"NULL" | b"")
}

/// The closing quote of the JSON string whose opening quote is at `q`
/// (escapes skipped; a line break ends it unclosed).
fn string_end(b: &[u8], q: usize) -> Option<usize> {
    let mut j = q + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j),
            b'\n' => return None,
            _ => j += 1,
        }
    }
}

/// The value after a key and its separator (`v` is its first byte):
/// quoted (`"…"`, `'…'`, `\"…\"`) to the closing quote on the line, or bare
/// up to a blank or delimiter.
fn value_span(b: &[u8], v: usize) -> (usize, usize) {
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    match at(v) {
        q @ (b'"' | b'\'') => {
            let vs = v + 1;
            let mut e = vs;
            while e < b.len() && at(e) != q && at(e) != b'\n' {
                e += if at(e) == b'\\' && at(e + 1) != q { 2 } else { 1 };
                if at(e - 1) == b'\\' && at(e) == q && q == b'"' && at(v.wrapping_sub(1)) == b'\\' {
                    e -= 1;
                    break;
                }
            }
            (vs, e.min(b.len()))
        }
        b'\\' if at(v + 1) == b'"' => {
            let vs = v + 2;
            let e = memmem::find(b.get(vs..).unwrap_or(&[]), b"\\\"").map_or(b.len(), |x| vs + x);
            (vs, e)
        }
        _ => {
            let mut e = v;
            while e < b.len()
                && !at(e).is_ascii_whitespace()
                && !matches!(
                    at(e),
                    b'&' | b';' | b',' | b'"' | b'\'' | b'}' | b']' | b')' | b'<' | b'>' | b'|'
                )
            {
                e += 1;
            }
            (v, e)
        }
    }
}

#[cfg(test)]
mod tests;
