//! Candidates and what becomes of them: the spans the detectors propose
//! (with a kind and a priority), the resolution of overlapping ones, and
//! the rewrite that masks each surviving span.

use super::{Finding, Redacted, Rule};
use crate::mask::{MaskStyle, REDACTED};
use crate::{mask, Kind};

pub(super) const fn bit(k: Kind) -> u32 {
    1 << (k.id() - 1)
}

/// A proposed span. `aux` carries per-kind detail (the e-mail separator's
/// offset); `merged` marks a union of partially overlapping candidates.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cand {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) kind: Kind,
    pub(super) prio: u8,
    pub(super) aux: usize,
    pub(super) merged: bool,
    /// What proposed it (explain mode).
    pub(super) rule: Rule,
    /// A rule's own mask style, instead of the kind's.
    pub(super) style: Option<MaskStyle>,
}

/// `aux` of an [`Kind::Address`] candidate that is a UK postcode.
pub(super) const AUX_POSTCODE: usize = 1;

/// Resolution priorities: on equal spans the higher wins; on partial overlap
/// the union takes the higher one's kind.
pub(super) const P_SHAPE: u8 = 90; // JWT, API key, private key block

pub(super) const P_KEYED: u8 = 85; // value of a secret key, bearer token, URL password

pub(super) const P_VALIDATED: u8 = 80; // PAN, IBAN

pub(super) const P_EMAIL: u8 = 70;

pub(super) const P_FIELD: u8 = 95; // a field rule: the operator said so

pub(super) const P_CUSTOM: u8 = 75; // an operator's pattern rule

pub(super) const P_NAME: u8 = 50;

pub(super) const P_CONTEXT: u8 = 40; // phone, sort code, account number

fn resolve(text: &str, mut cands: Vec<Cand>) -> Vec<Cand> {
    cands.retain(|c| c.start < c.end && text.is_char_boundary(c.start) && text.is_char_boundary(c.end));
    cands.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)).then(b.prio.cmp(&a.prio)));
    let mut out: Vec<Cand> = Vec::with_capacity(cands.len());
    for c in cands {
        match out.last_mut() {
            Some(last) if c.start < last.end => {
                if c.end <= last.end {
                    // Contained: an equal span of higher priority takes
                    // over; a strictly smaller one of higher priority (a
                    // secret key's bare value at the start of a spaced IBAN)
                    // makes the whole span fully redacted.
                    if c.prio > last.prio {
                        if c.start == last.start && c.end == last.end {
                            *last = c;
                        } else {
                            last.kind = c.kind;
                            last.prio = c.prio;
                            last.rule = c.rule;
                            last.merged = true;
                        }
                    }
                } else {
                    // Partial overlap: mask the union.
                    if c.prio > last.prio {
                        last.kind = c.kind;
                        last.prio = c.prio;
                        last.rule = c.rule;
                    }
                    last.end = c.end;
                    last.merged = true;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Resolves overlapping candidates and writes the masked text.
pub(super) fn rewrite(text: &str, cands: Vec<Cand>) -> Redacted {
    let spans = resolve(text, cands);
    let mut out = String::with_capacity(text.len() + 16);
    let mut findings = Vec::with_capacity(spans.len());
    let mut last = 0usize;
    for c in spans {
        let (Some(before), Some(value)) = (text.get(last..c.start), text.get(c.start..c.end)) else {
            continue;
        };
        out.push_str(before);
        replacement(text, &c, value, &mut out);
        findings.push(Finding {
            kind: c.kind,
            start: c.start,
            end: c.end,
            rule: c.rule,
        });
        last = c.end;
    }
    out.push_str(text.get(last..).unwrap_or(""));
    Redacted { text: out, findings }
}

fn replacement(text: &str, c: &Cand, value: &str, out: &mut String) {
    if c.merged {
        out.push_str(REDACTED);
        return;
    }
    if let Some(style) = c.style {
        out.push_str(&style.apply(value));
        return;
    }
    match c.kind {
        Kind::Pan => out.push_str(&mask::pan(value)),
        Kind::Iban => out.push_str(&mask::iban_mask(value)),
        Kind::UkSortCode => out.push_str(&mask::keep_last_digits(value, 2)),
        Kind::UkAccountNumber => out.push_str(&mask::account(value)),
        Kind::Phone => out.push_str(&mask::phone(value)),
        Kind::Name => out.push_str(&mask::initials(value)),
        Kind::Email => {
            let sep_len = if text.as_bytes().get(c.aux) == Some(&b'@') {
                1
            } else {
                3
            };
            match (
                text.get(c.start..c.aux),
                text.get(c.aux..c.aux + sep_len),
                text.get(c.aux + sep_len..c.end),
            ) {
                (Some(local), Some(sep), Some(domain)) => out.push_str(&mask::email(local, sep, domain)),
                _ => out.push_str(REDACTED),
            }
        }
        Kind::NationalId | Kind::DateOfBirth => out.push_str(&mask::stars(value)),
        Kind::Address if c.aux == AUX_POSTCODE => out.push_str(&mask::postcode(value)),
        Kind::Secret
        | Kind::Jwt
        | Kind::BearerToken
        | Kind::ApiKey
        | Kind::Password
        | Kind::TrackData
        | Kind::Address
        | Kind::Custom => out.push_str(REDACTED),
    }
}
