//! Verification: the chain, the MACs and the head, over log text fed in
//! pieces of any size with bounded memory.
use super::chain::Anchor;
use super::record::{chain_start, line_hash, split_line, to_hex, AuditKey, Body};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The result of verifying a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers.
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Hash of the last record.
    pub last_hash: String,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record at line {line}{}: {reason}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct Broken {
    /// 1-based line number (in the concatenation of the files given).
    pub line: u64,
    /// The record's claimed sequence number, if readable.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// Longest record line `Verifier` accepts (a record is a few hundred
/// bytes; the longest fields are bounded by the daemon): a longer "line"
/// is reported, never buffered.
pub const MAX_LINE: usize = 64 * 1024;

/// Verifies log text (files in chain order, concatenated). With an
/// `anchor` (the daemon's last durable record, or the head file read
/// before the log), a log that ends before it — its tail cut off — or that
/// holds a different record at its sequence number is reported.
pub fn verify(text: &str, key: &AuditKey, anchor: Option<&Anchor>) -> Result<Report, Broken> {
    let mut v = Verifier::new(key, anchor.cloned());
    v.feed(text.as_bytes())?;
    v.finish()
}

/// Verifies a log fed in pieces of any size (files in chain order, a
/// gRPC stream's chunks): memory stays bounded by one piece plus one
/// partial line of at most [`MAX_LINE`] bytes, whatever the log's size.
pub struct Verifier {
    mac: Option<Hmac<Sha256>>,
    anchor: Option<Anchor>,
    anchor_seen: bool,
    prev: Option<String>,
    line_no: u64,
    /// The start of a line whose end has not been fed yet.
    pub(super) partial: Vec<u8>,
    report: Report,
    /// The first problem, once found (later input is ignored).
    broken: Option<Broken>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("line_no", &self.line_no)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier under `key`, checking against `anchor` if given.
    pub fn new(key: &AuditKey, anchor: Option<Anchor>) -> Self {
        Verifier {
            mac: key.hmac(),
            anchor,
            anchor_seen: false,
            prev: None,
            line_no: 0,
            partial: Vec::new(),
            report: Report {
                records: 0,
                first_seq: 0,
                last_seq: 0,
                last_hash: chain_start(),
            },
            broken: None,
        }
    }

    /// Feeds the next bytes of the log. Returns the first problem as soon
    /// as it is found (and keeps returning it).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Broken> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        while let Some(i) = bytes.iter().position(|&c| c == b'\n') {
            let (line, rest) = bytes.split_at(i);
            bytes = rest.get(1..).unwrap_or_default();
            let r = if self.partial.is_empty() {
                self.line(line)
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                let r = self.check_length(whole.len()).and_then(|()| self.line(&whole));
                whole.clear();
                self.partial = whole;
                r
            };
            if let Err(b) = r {
                self.broken = Some(b.clone());
                return Err(b);
            }
        }
        if let Err(b) = self.check_length(self.partial.len() + bytes.len()) {
            self.broken = Some(b.clone());
            return Err(b);
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn check_length(&self, len: usize) -> Result<(), Broken> {
        if len > MAX_LINE {
            return Err(Broken {
                line: self.line_no + 1,
                seq: None,
                reason: format!("not an audit record (a line longer than {MAX_LINE} bytes)"),
            });
        }
        Ok(())
    }

    /// Ends the log: a last line without its newline is checked, then the
    /// anchor.
    pub fn finish(mut self) -> Result<Report, Broken> {
        if let Some(b) = self.broken.take() {
            return Err(b);
        }
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last)?;
        }
        self.check_anchor()?;
        Ok(self.report)
    }

    fn mac_hex(&self, data: &[u8]) -> String {
        self.mac.as_ref().map_or_else(String::new, |m| {
            let mut m = m.clone();
            m.update(data);
            to_hex(&m.finalize().into_bytes())
        })
    }

    fn line(&mut self, line: &[u8]) -> Result<(), Broken> {
        self.line_no += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line_no = self.line_no;
        let broken = |seq: Option<u64>, reason: &str| Broken {
            line: line_no,
            seq,
            reason: reason.to_owned(),
        };
        let line = std::str::from_utf8(line).map_err(|_| broken(None, "not an audit record"))?;
        let Some((body_json, mac)) = split_line(line) else {
            return Err(broken(None, "not an audit record"));
        };
        let body: Body<'_> = serde_json::from_str(&body_json).map_err(|_| broken(None, "not an audit record"))?;
        if self.mac_hex(body_json.as_bytes()) != mac {
            return Err(broken(Some(body.seq), "MAC mismatch: the record was altered or forged"));
        }
        match &self.prev {
            Some(p) => {
                let s = self.report.last_seq + 1;
                if body.seq != s {
                    return Err(broken(
                        Some(body.seq),
                        &format!("sequence gap: expected {s} (records deleted, inserted or reordered)"),
                    ));
                }
                if &body.prev != p {
                    return Err(broken(
                        Some(body.seq),
                        "hash chain broken: the previous record was changed, removed or reordered",
                    ));
                }
            }
            None => {
                if body.seq == 1 && body.prev != chain_start() {
                    return Err(broken(Some(1), "the first record does not start the chain"));
                }
                self.report.first_seq = body.seq;
                // The oldest retained record is in the head: a log that
                // starts later lost its oldest records or files.
                if let Some(a) = self.anchor.as_ref().filter(|a| a.first_seq > 0) {
                    if body.seq > a.first_seq {
                        return Err(broken(
                            Some(body.seq),
                            &format!(
                                "records deleted from the start: the retained log begins at seq {} but the \
                                 log given starts at seq {} (a deleted rotated file, or not every file was given, \
                                 oldest first)",
                                a.first_seq, body.seq
                            ),
                        ));
                    }
                }
            }
        }
        let h = line_hash(line.as_bytes());
        if let Some(a) = &self.anchor {
            if body.seq == a.seq {
                if h != a.hash {
                    return Err(broken(
                        Some(body.seq),
                        "this record differs from the one the audit head recorded",
                    ));
                }
                self.anchor_seen = true;
            } else if h == a.hash {
                // The head names this very record (its hash covers the
                // sequence number) under another sequence number: the head
                // and the log disagree, whichever of them was changed.
                return Err(broken(
                    Some(body.seq),
                    &format!("the audit head records this record as seq {}", a.seq),
                ));
            }
        }
        self.report.records += 1;
        self.report.last_seq = body.seq;
        self.report.last_hash = h.clone();
        self.prev = Some(h);
        Ok(())
    }

    fn check_anchor(&self) -> Result<(), Broken> {
        let (Some(a), report) = (&self.anchor, &self.report) else {
            return Ok(());
        };
        // A head that knows the oldest retained record stands for the
        // whole retained log, which must then reach it (a deleted live log
        // or newest rotated file is a cut tail). Without it (an old head),
        // only the segment the anchor falls in can be checked against it:
        // rotated files alone end before the live file starts.
        let covers = a.first_seq > 0 || report.records == 0 || report.last_seq >= a.file_first_seq;
        if covers && !self.anchor_seen && a.seq > 0 && report.last_seq < a.seq {
            return Err(Broken {
                line: report.records + 1,
                seq: Some(report.last_seq + 1),
                reason: format!(
                    "truncated: the log ends at seq {} but seq {} was written",
                    report.last_seq, a.seq
                ),
            });
        }
        // The live file starts at the head's `file_first_seq`: records
        // missing from its start (or the whole file replaced by a later
        // piece) are cut records too.
        if report.records > 0 && report.last_seq >= a.file_first_seq && report.first_seq > a.file_first_seq {
            return Err(Broken {
                line: 1,
                seq: Some(report.first_seq),
                reason: format!(
                    "truncated at the start: the live log begins at seq {} but starts at seq {}",
                    a.file_first_seq, report.first_seq
                ),
            });
        }
        Ok(())
    }
}
