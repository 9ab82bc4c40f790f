//! Start-up recovery: the writer continues the chain from the head (or,
//! before the first head, from the log's last record), adopts complete
//! records written before a crash, and moves anything that does not
//! continue the chain aside into a side file, byte for byte, as evidence.
//! Records the head covers are never touched.
use super::chain::{head_path, rotated_files, rotated_path, Head};
use super::record::{chain_start, line_hash, split_line, AuditKey, Body, LineWriter};
use super::writer::{Options, Writer};
use super::AuditError;
use std::path::{Path, PathBuf};

/// Appends the newline a log's last line lacks, durably, so that the next
/// record starts a line of its own. `bytes` is the file's current content.
pub(super) fn terminate_last_line(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    if bytes.is_empty() || bytes.last() == Some(&b'\n') {
        return Ok(());
    }
    let io = |e: std::io::Error| AuditError(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(io)?;
    std::io::Write::write_all(&mut f, b"\n").map_err(io)?;
    f.sync_all().map_err(io)
}

/// Moves an unterminated last line (a write torn by a crash) from a log
/// that has no head yet into `<log>.torn`, durably. Complete lines are
/// never touched.
pub(super) fn cut_torn_tail(path: &Path) -> Result<(), AuditError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AuditError(format!("{}: {e}", path.display()))),
    };
    let keep = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    move_tail_aside(path, &bytes, keep, ".torn")
}

/// Moves `bytes[keep..]` (the log's content past `keep`) into the side file
/// `<log><suffix>`, durably, then cuts the log to `keep` bytes, durably.
/// Nothing is discarded: the side file keeps the bytes as evidence.
pub(super) fn move_tail_aside(path: &Path, bytes: &[u8], keep: usize, suffix: &str) -> Result<(), AuditError> {
    let Some(rest) = bytes.get(keep..).filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let mut side = path.as_os_str().to_owned();
    side.push(suffix);
    let side = PathBuf::from(side);
    write_synced(&side, rest).map_err(|e| AuditError(format!("{}: {e}", side.display())))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(keep as u64).and_then(|()| f.sync_all()))
        .map_err(|e| AuditError(format!("{}: {e}", path.display())))?;
    tracing::warn!(bytes = rest.len(), moved_to = %side.display(),
        "audit log: bytes after the last record that continues the chain (a crash's torn write, or not ours) were moved aside");
    Ok(())
}

/// Writes `data` to a new file (mode 0600) and syncs it.
pub(super) fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

impl Writer {
    #[cfg(test)]
    pub(super) fn open(path: &Path, key: AuditKey, rotate_bytes: u64) -> Result<Self, AuditError> {
        Self::open_with(
            path,
            key,
            &Options {
                rotate_bytes,
                ..Options::default()
            },
        )
    }

    pub(super) fn open_with(path: &Path, key: AuditKey, opts: &Options) -> Result<Self, AuditError> {
        let mut w = Writer {
            path: path.to_owned(),
            lines: LineWriter::new(&key),
            buf: String::with_capacity(1 << 20),
            file: None,
            dirty: false,
            head_stale: false,
            cut_to: None,
            last_sync: std::time::Instant::now(),
            key,
            rotate_bytes: opts.rotate_bytes,
            keep_files: opts.keep_files,
            keep_age: opts.keep_age,
            seq: 0,
            last_hash: chain_start(),
            file_first_seq: 1,
            first_seq: 1,
        };
        // Continue the chain from the head (authoritative), else from the file.
        if let Ok(text) = std::fs::read_to_string(head_path(path)) {
            if let Ok(h) = serde_json::from_str::<Head>(&text) {
                if w.key
                    .mac(Head::mac_input(h.seq, &h.hash, h.file_first_seq, h.first_seq).as_bytes())
                    == h.mac
                {
                    w.seq = h.seq;
                    w.last_hash = h.hash;
                    w.file_first_seq = h.file_first_seq;
                    // A head from before `first_seq`: the oldest file on disk.
                    w.first_seq = h.first_seq.unwrap_or_else(|| {
                        rotated_files(path)
                            .first()
                            .map_or(h.file_first_seq, |r| r.first.min(h.file_first_seq))
                    });
                    w.recover_tail()?;
                    if h.first_seq.is_none() {
                        w.write_head()?;
                    }
                    w.prune()?;
                    return Ok(w);
                }
                return Err(AuditError(format!(
                    "{} fails its integrity check",
                    head_path(path).display()
                )));
            }
        }
        // No head yet (a crash before the first one): a torn last line is
        // moved aside before the chain continues from the last record.
        cut_torn_tail(path)?;
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(last) = text.lines().last() {
                let (body, _) =
                    split_line(last).ok_or_else(|| AuditError("the last audit record is malformed".into()))?;
                let b: Body<'_> =
                    serde_json::from_str(&body).map_err(|_| AuditError("the last audit record is malformed".into()))?;
                w.seq = b.seq;
                w.last_hash = line_hash(last.as_bytes());
                w.file_first_seq = text
                    .lines()
                    .next()
                    .and_then(split_line)
                    .and_then(|(b, _)| serde_json::from_str::<Body<'_>>(&b).ok().map(|b| b.seq))
                    .unwrap_or(1);
                w.first_seq = rotated_files(path)
                    .first()
                    .map_or(w.file_first_seq, |r| r.first.min(w.file_first_seq));
            }
        }
        Ok(w)
    }

    /// Recovers the log's tail after a crash, starting from the (MAC-checked)
    /// head. Records the head covers are never touched. After the head's
    /// record, each complete line whose sequence number, `prev` hash and
    /// MAC continue the chain is adopted (written before the crash, the
    /// head not yet moved). Whatever follows the last adopted record — a
    /// line torn by the crash, or anything that does not continue the
    /// chain — is moved, byte for byte, into a side file
    /// `<log>.unverified-<unix time>` (kept as evidence, reported in the
    /// daemon's log) so that new records chain on from a clean end. A log
    /// that lacks the head's record is left alone: that is truncation, for
    /// `verify` to report, not for the writer to paper over.
    pub(super) fn recover_tail(&mut self) -> Result<(), AuditError> {
        let io = |p: &Path, e: std::io::Error| AuditError(format!("{}: {e}", p.display()));
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.recover_rotation(),
            Err(e) => return Err(io(&self.path, e)),
        };
        // Offset just after the head's record (or 0 when the head precedes
        // this file: it was rotated right after the head's record).
        let mut pos = 0usize;
        if self.seq + 1 != self.file_first_seq {
            let mut found = false;
            for line in bytes.split_inclusive(|&c| c == b'\n') {
                pos += line.len();
                if line.last() == Some(&b'\n') && line_hash(&line[..line.len() - 1]) == self.last_hash {
                    found = true;
                    break;
                }
            }
            if !found {
                // The head's record may be the last line with its newline
                // lost (the file cut by one byte), or missing altogether
                // (truncation, for `verify` to report). Either way the next
                // record must start on a line of its own, never glued to
                // the last one.
                return terminate_last_line(&self.path, &bytes);
            }
        }
        let mut adopted = 0u64;
        let mut end = pos;
        for line in bytes.get(pos..).unwrap_or(&[]).split_inclusive(|&c| c == b'\n') {
            let Some(body_line) = line.strip_suffix(b"\n").and_then(|l| std::str::from_utf8(l).ok()) else {
                break;
            };
            let Some((body_json, mac)) = split_line(body_line) else {
                break;
            };
            let Ok(body) = serde_json::from_str::<Body<'_>>(&body_json) else {
                break;
            };
            if body.seq != self.seq + 1 || body.prev != self.last_hash || self.key.mac(body_json.as_bytes()) != mac {
                break;
            }
            self.seq = body.seq;
            self.last_hash = line_hash(body_line.as_bytes());
            adopted += 1;
            end += line.len();
        }
        let moved = end < bytes.len();
        if moved {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            move_tail_aside(&self.path, &bytes, end, &format!(".unverified-{secs}"))?;
            kmsd_keystore::failpoints::kill_point(kmsd_keystore::failpoints::AUDIT_RECOVER);
        }
        if adopted > 0 {
            tracing::warn!(
                records = adopted,
                "audit records written before a crash continue the chain"
            );
            // durable before the head covers them
            std::fs::File::open(&self.path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(&self.path, e))?;
        }
        if adopted > 0 || moved {
            self.write_head()?;
        }
        Ok(())
    }

    /// The live log is missing. If a crash came between a rotation's
    /// rename and its head update, the rotated file is there and ends with
    /// the head's record: the live file then starts after it.
    pub(super) fn recover_rotation(&mut self) -> Result<(), AuditError> {
        if self.file_first_seq > self.seq {
            return Ok(());
        }
        let Ok(text) = std::fs::read_to_string(rotated_path(&self.path, self.file_first_seq, self.seq)) else {
            return Ok(());
        };
        let ends_with_head = text
            .lines()
            .last()
            .is_some_and(|l| line_hash(l.as_bytes()) == self.last_hash);
        if ends_with_head {
            self.file_first_seq = self.seq + 1;
            self.write_head()?;
        }
        Ok(())
    }
}
