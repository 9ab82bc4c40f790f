//! Envelope encryption through the daemon: [`Envelopes::seal`] and
//! [`Envelopes::open`] ([`crate::envelope`] format, `docs/formats.md` §2),
//! with the data-key caches of [`crate::cache`].
//!
//! Sealing asks the daemon for a data key (`GenerateDataKey`, 256 bits,
//! associated data `"kmsd data key v1"`) and encrypts locally; with the
//! cache, one data key seals up to [`CacheLimits::max_messages`] messages,
//! so N messages cost about N / max_messages calls. Opening unwraps the
//! data key with `Decrypt` (or takes it from the unwrap cache) and
//! decrypts locally. A caller that knows which kmsd keys its data may be
//! under should [`expect_keys`](Envelopes::expect_keys): a blob naming
//! another key is refused before any call, so a forged blob cannot make
//! this service ask the daemon to unwrap under a key of the attacker's
//! choosing.
pub use crate::cache::{CacheLimits, UnwrapLimits};
use crate::cache::{DataKeyCache, Lease, UnwrapCache};
use crate::client::Client;
use crate::envelope::{self, Envelope};
use crate::error::Error;
use crate::format::{DataKey, FormatError, DATA_KEY_AAD};
use crate::proto;
use crate::stream::{Header, SEGMENT_SIZE};
use crate::stream_io::{StreamReader, StreamStart, StreamWriter};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroize;

/// Seals and opens envelopes through one [`Client`]. Cheap to clone (the
/// caches are shared).
#[derive(Clone)]
pub struct Envelopes {
    client: Client,
    seal_cache: Arc<DataKeyCache>,
    unwrap_cache: Arc<UnwrapCache>,
    /// `None`: any key name is accepted.
    expected: Option<Arc<HashSet<String>>>,
}

impl fmt::Debug for Envelopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelopes")
            .field("client", &self.client)
            .field("cached_data_keys", &self.seal_cache.len())
            .field("cached_unwrapped_keys", &self.unwrap_cache.len())
            .field("expected", &self.expected)
            .finish()
    }
}

impl Envelopes {
    /// With the default limits ([`CacheLimits::default`],
    /// [`UnwrapLimits::default`]).
    pub fn new(client: Client) -> Self {
        Envelopes::with_limits(client, CacheLimits::default(), UnwrapLimits::default())
    }

    /// With the given cache limits (`disabled()` for no caching).
    pub fn with_limits(client: Client, seal: CacheLimits, open: UnwrapLimits) -> Self {
        Envelopes {
            client,
            seal_cache: Arc::new(DataKeyCache::new(seal)),
            unwrap_cache: Arc::new(UnwrapCache::new(open)),
            expected: None,
        }
    }

    /// Only blobs under these kmsd keys are opened; any other is refused
    /// with [`Error::UnexpectedKey`] before the daemon is called.
    pub fn expect_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.expected = Some(Arc::new(keys.into_iter().map(Into::into).collect()));
        self
    }

    /// The client the calls go through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Seals `plaintext` under a data key wrapped by kmsd key `key`, with
    /// `aad` authenticated (the same bytes are needed to open).
    pub async fn seal(&self, key: &str, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let len = u64::try_from(plaintext.len()).unwrap_or(u64::MAX);
        let lease = match self.seal_cache.take(key, len, Instant::now()) {
            Some(lease) => lease,
            None => {
                let (data_key, wrapped) = self.generate(key).await?;
                let lease = Lease {
                    key: Arc::new(data_key),
                    wrapped: Arc::from(wrapped),
                };
                self.seal_cache.put(key, &lease, len, Instant::now());
                lease
            }
        };
        Ok(envelope::seal(&lease.key, key, &lease.wrapped, plaintext, aad)?)
    }

    /// Opens a blob [`seal`](Self::seal) made, with the same `aad`.
    pub async fn open(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let env = Envelope::parse(blob)?;
        let key = self.unwrap(env.key_name(), env.wrapped_key()).await?;
        Ok(env.open(&key, aad)?)
    }

    /// A writer that encrypts what is written to it into the stream format
    /// ([`crate::stream`], segments of 64 KiB) on `out`, under a fresh data
    /// key wrapped by kmsd key `key` (one `GenerateDataKey` per stream, not
    /// cached). Call `shutdown` at the end: it seals the final segment.
    pub async fn stream_writer<W: AsyncWrite + Unpin>(
        &self,
        key: &str,
        out: W,
        aad: &[u8],
    ) -> Result<StreamWriter<W>, Error> {
        let (data_key, wrapped) = self.generate(key).await?;
        let header = Header::new(SEGMENT_SIZE, key, &wrapped)?;
        Ok(StreamWriter::new(out, &header, &data_key, aad)?)
    }

    /// A reader of the plaintext of the stream on `input`: reads the
    /// header, unwraps its data key (cache, expected keys and `Decrypt` as
    /// for [`open`](Self::open)), then decrypts segment by segment. Its
    /// output is complete only once it reaches end-of-file without error.
    pub async fn stream_reader<R: AsyncRead + Unpin>(&self, input: R, aad: &[u8]) -> Result<StreamReader<R>, Error> {
        let start = StreamStart::read(input).await?;
        let key = self
            .unwrap(start.header().key_name(), start.header().wrapped_key())
            .await?;
        Ok(start.into_reader(&key, aad)?)
    }

    /// A fresh data key from the daemon: the key, and its wrapped form.
    pub(crate) async fn generate(&self, key: &str) -> Result<(DataKey, Vec<u8>), Error> {
        let mut r = self
            .client
            .generate_data_key(proto::GenerateDataKeyRequest {
                key: key.to_owned(),
                bits: 256,
                associated_data: DATA_KEY_AAD.to_vec(),
            })
            .await?;
        let data_key = DataKey::from_slice(&r.plaintext);
        r.plaintext.zeroize();
        let data_key = data_key.ok_or(FormatError::Internal("the daemon's data key is not 32 bytes"))?;
        Ok((data_key, std::mem::take(&mut r.ciphertext)))
    }

    /// The data key of `wrapped` under kmsd key `key`: from the unwrap
    /// cache, or `Decrypt`. Refuses a key outside [`expect_keys`](Self::expect_keys).
    pub(crate) async fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<Arc<DataKey>, Error> {
        if let Some(expected) = &self.expected {
            if !expected.contains(key) {
                return Err(Error::UnexpectedKey { key: key.to_owned() });
            }
        }
        if let Some(k) = self.unwrap_cache.get(key, wrapped, Instant::now()) {
            return Ok(k);
        }
        let mut r = self
            .client
            .decrypt(proto::DecryptRequest {
                key: key.to_owned(),
                ciphertext: wrapped.to_vec(),
                associated_data: DATA_KEY_AAD.to_vec(),
            })
            .await?;
        let data_key = DataKey::from_slice(&r.plaintext);
        r.plaintext.zeroize();
        let data_key = Arc::new(data_key.ok_or(FormatError::Malformed("the wrapped data key is not 32 bytes"))?);
        self.unwrap_cache.put(key, wrapped, &data_key, Instant::now());
        Ok(data_key)
    }

    /// Drops every cached data key (both sides): each is zeroized once no
    /// seal or open in flight still uses it.
    pub fn clear_caches(&self) {
        self.seal_cache.clear();
        self.unwrap_cache.clear();
    }

    /// Data keys cached now: (sealing side, opening side).
    pub fn cached(&self) -> (usize, usize) {
        (self.seal_cache.len(), self.unwrap_cache.len())
    }
}
