//! `kmsctl audit verify`: the daemon checks a log's chain and MACs.
use crate::connection::Chan;
use crate::error::Error;
use crate::output::Out;
use kmsd_client::proto::{self, admin_client::AdminClient};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Streams FILES (in chain order) after the daemon's audit head: the
/// files must reach the head, so a cut tail is caught. Read in 1 MiB
/// pieces as they are sent: neither side holds the whole log.
pub async fn verify(channel: Chan, files: &[PathBuf], out: Out) -> Result<(), Error> {
    let mut admin = AdminClient::new(channel);
    let head = admin.audit_head(proto::AuditHeadRequest {}).await?.into_inner();
    let mut open = Vec::new();
    for f in files {
        open.push((f.clone(), std::fs::File::open(f).map_err(Error::io("reading", f))?));
    }
    let mut open = open.into_iter();
    let mut current = open.next();
    let mut head = Some(head);
    let read_error: Arc<Mutex<Option<Error>>> = Arc::default();
    let errors = read_error.clone();
    let chunks = std::iter::from_fn(move || {
        use std::io::Read as _;
        loop {
            let Some((path, f)) = current.as_mut() else {
                // (an empty log still sends the head once)
                return head.take().map(|h| proto::AuditChunk {
                    data: vec![],
                    head: Some(h),
                });
            };
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf) {
                Ok(0) => current = open.next(),
                Ok(n) => {
                    buf.truncate(n);
                    return Some(proto::AuditChunk {
                        data: buf,
                        head: head.take(),
                    });
                }
                Err(e) => {
                    if let Ok(mut slot) = errors.lock() {
                        *slot = Some(Error::io("reading", path.as_path())(e));
                    }
                    return None;
                }
            }
        }
    });
    let r = admin.verify_audit(tokio_stream::iter(chunks)).await?.into_inner();
    if let Some(e) = read_error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    if r.ok {
        out.message(
            &json!({"ok": true, "records": r.records, "first_seq": r.first_seq, "last_seq": r.last_seq}),
            &format!("OK {} records (seq {}..{})", r.records, r.first_seq, r.last_seq),
        );
        Ok(())
    } else {
        out.message(
            &json!({"ok": false, "broken_line": r.broken_line, "broken_seq": r.broken_seq, "reason": r.reason}),
            &format!("BROKEN at line {} (seq {}): {}", r.broken_line, r.broken_seq, r.reason),
        );
        Err(Error::AuditBroken { line: r.broken_line })
    }
}
