//! How results are printed: aligned text for people, or one JSON document
//! per command for scripts (`--output json`). Field names are the same in
//! both; times are RFC 3339 (UTC), `-` in text and `null` in JSON when
//! unset; enum values print as their proto names (`DECRYPT_ONLY`).
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Where a command's result goes.
#[derive(Debug, Clone, Copy)]
pub struct Out(pub Format);

impl Out {
    /// Whether the result is printed as JSON.
    pub fn is_json(self) -> bool {
        self.0 == Format::Json
    }

    /// Prints `value` as JSON, or `text()` (which ends without a newline).
    pub fn emit(self, value: &Value, text: impl FnOnce() -> String) {
        match self.0 {
            Format::Json => println!("{value}"),
            Format::Text => println!("{}", text()),
        }
    }

    /// Prints a one-line message in text mode, and `value` in JSON mode.
    pub fn message(self, value: &Value, line: &str) {
        self.emit(value, || line.to_owned());
    }
}

/// `label: value` lines with the values aligned; fields with a JSON
/// object's keys, in order.
pub fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:<width$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table: a header and rows, each column as wide as its widest cell;
/// numbers (cells that parse as one) right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..header.len())
        .map(|i| !rows.is_empty() && rows.iter().all(|r| r.get(i).is_some_and(|c| c.parse::<f64>().is_ok())))
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                out.push_str("  ");
            }
            if numeric.get(i).copied().unwrap_or(false) {
                out.push_str(&format!("{c:>w$}"));
            } else {
                out.push_str(&format!("{c:<w$}"));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    for r in rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// A Unix time for text: RFC 3339, or `-` when unset (0).
pub fn time(t: i64) -> String {
    match u64::try_from(t) {
        Ok(secs) if secs > 0 => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string(),
        _ => "-".into(),
    }
}

/// A Unix time for JSON: RFC 3339, or `null` when unset.
pub fn time_json(t: i64) -> Value {
    match time(t).as_str() {
        "-" => Value::Null,
        s => json!(s),
    }
}

/// A duration in seconds for text, in the form the flags accept (`90d`,
/// `1d 12h`), `-` when 0.
pub fn duration(secs: u64) -> String {
    if secs == 0 {
        return "-".into();
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_aligned() {
        let t = fields(&[("name", "cards".into()), ("primary_version", "2".into())]);
        assert_eq!(t, "name:            cards\nprimary_version: 2");
    }

    #[test]
    fn tables_align_columns_and_right_align_numbers() {
        let t = table(
            &["VERSION", "STATE"],
            &[
                vec!["1".into(), "DECRYPT_ONLY".into()],
                vec!["10".into(), "ACTIVE".into()],
            ],
        );
        assert_eq!(t, "VERSION  STATE\n      1  DECRYPT_ONLY\n     10  ACTIVE");
    }

    #[test]
    fn unset_times_are_a_dash_or_null() {
        assert_eq!(time(0), "-");
        assert_eq!(time_json(0), Value::Null);
        assert_eq!(time(1_609_459_200), "2021-01-01T00:00:00Z");
    }

    #[test]
    fn durations_read_as_the_flags_take_them() {
        assert_eq!(duration(7_776_000), "90d");
        assert_eq!(duration(129_600), "1d 12h");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(0), "-");
    }
}
