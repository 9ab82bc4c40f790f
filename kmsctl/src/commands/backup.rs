//! `kmsctl backup | restore`: snapshots of every key ring (records stay
//! sealed under the master key).
use crate::connection::Chan;
use crate::error::Error;
use crate::output::Out;
use kmsd_client::proto::{self, keys_client::KeysClient};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use tokio_stream::StreamExt as _;

/// Streams the snapshot into FILE.partial (mode 0600), syncs, renames.
pub async fn backup(channel: Chan, file: &Path, out: Out) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut stream = KeysClient::new(channel)
        .backup(proto::BackupRequest {})
        .await?
        .into_inner();
    let tmp = file.with_extension("partial");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("creating", &tmp))?;
    let mut pb: Option<indicatif::ProgressBar> = None;
    let (mut bytes, mut records) = (0u64, 0u64);
    while let Some(chunk) = stream.message().await? {
        if chunk.total_records > 0 {
            records = chunk.total_records;
            pb = Some(bar(chunk.total_records, "backup"));
        }
        bytes += chunk.data.len() as u64;
        f.write_all(&chunk.data).map_err(Error::io("writing", &tmp))?;
    }
    f.sync_all().map_err(Error::io("syncing", &tmp))?;
    std::fs::rename(&tmp, file).map_err(Error::io("renaming to", file))?;
    if let Some(pb) = pb {
        pb.set_position(pb.length().unwrap_or(0));
        pb.finish_and_clear();
    }
    out.message(
        &json!({"file": file.display().to_string(), "bytes": bytes, "records": records}),
        &format!("wrote {} ({bytes} bytes, {records} records)", file.display()),
    );
    Ok(())
}

/// Uploads a snapshot into the daemon's empty store.
pub async fn restore(channel: Chan, file: &Path, out: Out) -> Result<(), Error> {
    let data = std::fs::read(file).map_err(Error::io("reading", file))?;
    let pb = bar(data.len() as u64, "upload");
    let chunks: Vec<proto::RestoreChunk> = data
        .chunks(1 << 20)
        .map(|c| proto::RestoreChunk { data: c.to_vec() })
        .collect();
    let pbc = pb.clone();
    let stream = tokio_stream::iter(chunks).map(move |c| {
        pbc.inc(c.data.len() as u64);
        c
    });
    let r = KeysClient::new(channel).restore(stream).await?.into_inner();
    pb.finish_and_clear();
    out.message(
        &json!({"records": r.records, "keys": r.keys}),
        &format!("restored {} records ({} keys)", r.records, r.keys),
    );
    Ok(())
}

/// A progress bar on stderr (drawn only on a terminal).
fn bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}
