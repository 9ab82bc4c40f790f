//! `kmsctl encrypt-file | decrypt-file`: the stream format
//! (`docs/formats.md` §3) through the library's tokio adapters, in
//! constant memory whatever the file's size.
//!
//! A file output is written to a hidden temporary file beside it (mode
//! 0600) and renamed over the destination only when everything succeeded:
//! for decryption that means the whole stream authenticated, so a
//! truncated or tampered stream never leaves a plausible-looking partial
//! plaintext under the requested name. With `-` (stdout) the caller must
//! discard the output when kmsctl exits non-zero. A progress bar is drawn
//! on stderr when it is a terminal.
use crate::error::Error;
use indicatif::{ProgressBar, ProgressStyle};
use kmsd_client::stream_io::format_error;
use kmsd_client::{Client, Envelopes};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Read and write in pieces of this size (four segments).
const CHUNK: usize = 256 * 1024;

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// `encrypt-file IN OUT --key K`.
pub async fn encrypt(client: &Client, input: &Path, output: &Path, key: &str, aad: &str) -> Result<(), Error> {
    let envelopes = Envelopes::new(client.clone());
    let (reader, size) = open_input(input).await?;
    let mut out = Output::create(output)?;
    let result = async {
        let sink = out.take_writer()?;
        let mut writer = envelopes.stream_writer(key, sink, aad.as_bytes()).await?;
        copy(reader, &mut writer, size, input, output).await?;
        writer.shutdown().await.map_err(Error::io("writing", output))
    }
    .await;
    out.finish(result)
}

/// `decrypt-file IN OUT`.
pub async fn decrypt(
    client: &Client,
    input: &Path,
    output: &Path,
    aad: &str,
    expect_keys: &[String],
) -> Result<(), Error> {
    let mut envelopes = Envelopes::new(client.clone());
    if !expect_keys.is_empty() {
        envelopes = envelopes.expect_keys(expect_keys.iter().cloned());
    }
    let (reader, size) = open_input(input).await?;
    let mut out = Output::create(output)?;
    let result = async {
        let mut sink = out.take_writer()?;
        let plain = envelopes.stream_reader(reader, aad.as_bytes()).await?;
        copy(plain, &mut sink, size, input, output).await?;
        sink.shutdown().await.map_err(Error::io("writing", output))
    }
    .await;
    out.finish(result)
}

/// The input and, for a file, its size (for the progress bar).
async fn open_input(path: &Path) -> Result<(Reader, Option<u64>), Error> {
    if path == Path::new("-") {
        return Ok((Box::new(tokio::io::stdin()), None));
    }
    let f = tokio::fs::File::open(path).await.map_err(Error::io("reading", path))?;
    let size = f.metadata().await.ok().map(|m| m.len());
    Ok((Box::new(f), size))
}

/// Copies `from` to `to`; a failure of the stream format (authentication,
/// truncation) comes out as the library's typed error.
async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    to: &mut W,
    size: Option<u64>,
    input: &Path,
    output: &Path,
) -> Result<(), Error> {
    let bar = progress(size);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                bar.abandon();
                return Err(match format_error(&e) {
                    Some(f) => Error::Client(f.into()),
                    None => Error::io("reading", input)(e),
                });
            }
        };
        let piece = buf.get(..n).unwrap_or_default();
        if let Err(e) = to.write_all(piece).await {
            bar.abandon();
            return Err(match format_error(&e) {
                Some(f) => Error::Client(f.into()),
                None => Error::io("writing", output)(e),
            });
        }
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// A progress bar on stderr if it is a terminal, else a hidden one.
fn progress(size: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(len) => {
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            {
                bar.set_style(style);
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}") {
                bar.set_style(style);
            }
            bar
        }
    }
}

/// Where the output goes: stdout, or a temporary file renamed at the end.
struct Output {
    writer: Option<Writer>,
    /// (temporary file, destination) for a file output.
    file: Option<(PathBuf, PathBuf)>,
}

impl Output {
    fn create(path: &Path) -> Result<Output, Error> {
        if path == Path::new("-") {
            return Ok(Output {
                writer: Some(Box::new(tokio::io::stdout())),
                file: None,
            });
        }
        let name = path
            .file_name()
            .ok_or_else(|| Error::Input(format!("{} is not a file name", path.display())))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = dir.join(format!(
            ".{}.{}-{nonce:08x}.partial",
            name.to_string_lossy(),
            std::process::id()
        ));
        let f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Error::io("creating", &tmp))?
        };
        Ok(Output {
            writer: Some(Box::new(tokio::fs::File::from_std(f))),
            file: Some((tmp, path.to_owned())),
        })
    }

    fn take_writer(&mut self) -> Result<Writer, Error> {
        self.writer
            .take()
            .ok_or_else(|| Error::Input("the output is already in use".into()))
    }

    /// On success: the temporary file reaches the disk and takes the
    /// destination's name. On failure: it is removed.
    fn finish(self, result: Result<(), Error>) -> Result<(), Error> {
        let Some((tmp, dest)) = self.file else {
            return result;
        };
        let committed = result.and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(Error::io("writing", &tmp))?;
            std::fs::rename(&tmp, &dest).map_err(Error::io("renaming to", &dest))
        });
        if committed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        committed
    }
}
