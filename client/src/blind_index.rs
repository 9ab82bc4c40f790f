//! Blind indexes: find a row by an encrypted column's value without
//! decrypting every row (docs/blind-indexes.md has the recipe and its
//! costs).
//!
//! Beside each ciphertext the row stores `HMAC(column key, normalise(value))`
//! truncated to a few bytes, computed by kmsd (`Mac` on an `HMAC_SHA256`
//! or `HMAC_SHA512` key, one key per column, so equal values in two columns
//! do not link and one column's key can be rotated or revoked alone). A
//! lookup normalises the query the same way, computes its index and
//! selects the rows with that index, then decrypts only those and compares
//! the real values (a truncated index has false positives by design).
//!
//! [`BlindIndex`] holds the column's key name and truncation;
//! [`BlindIndex::compute_many`] uses `MacBatch` in chunks of
//! [`BATCH_ITEMS`]. Every index carries the key version that made it: after
//! the key rotates, new rows get new-version indexes and lookups compute
//! the query under each version still present ([`BlindIndex::compute_at`]),
//! until the rows are re-indexed.
use crate::client::Client;
use crate::error::Error;
use crate::proto;

/// Items per `MacBatch` call (the daemon's default batch limit is 10,000).
pub const BATCH_ITEMS: usize = 1_000;

/// The smallest truncation accepted, in bytes (below it an index is mostly
/// false positives on any real table).
pub const MIN_BYTES: usize = 2;

/// One value's blind index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexValue {
    /// The key version that computed it.
    pub key_version: u32,
    /// The truncated MAC.
    pub index: Vec<u8>,
}

impl IndexValue {
    /// `"<version>:<hex>"`, a text form for a database column.
    pub fn to_text(&self) -> String {
        let hex: String = self.index.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", self.key_version)
    }
}

/// A column's blind index: its kmsd MAC key and how many bytes of the MAC
/// are kept.
#[derive(Debug, Clone)]
pub struct BlindIndex {
    client: Client,
    key: String,
    bytes: usize,
}

/// A card number's digits, for its blind index: spaces and dashes dropped,
/// 12 to 19 digits (ISO/IEC 7812), anything else refused. (The Luhn check
/// is the caller's: an index of a mistyped number just finds nothing.)
pub fn card_number_digits(input: &str) -> Result<String, Error> {
    let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Settings(
            "not a card number: 12 to 19 digits, with optional spaces or dashes".into(),
        ));
    }
    Ok(digits)
}

impl BlindIndex {
    /// The index of a column whose MAC key is `key`, keeping `bytes` bytes
    /// of each MAC (at least [`MIN_BYTES`], at most the MAC's length; see
    /// docs/blind-indexes.md for choosing it).
    pub fn new(client: Client, key: impl Into<String>, bytes: usize) -> Result<BlindIndex, Error> {
        if !(MIN_BYTES..=64).contains(&bytes) {
            return Err(Error::Settings(format!(
                "a blind index keeps {MIN_BYTES} to 64 bytes of the MAC, not {bytes}"
            )));
        }
        Ok(BlindIndex {
            client,
            key: key.into(),
            bytes,
        })
    }

    /// The column's MAC key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn truncate(&self, mac: Vec<u8>, key_version: u32) -> Result<IndexValue, Error> {
        if mac.len() < self.bytes {
            return Err(Error::Settings(format!(
                "key {} gives {}-byte MACs, shorter than the index's {} bytes",
                self.key,
                mac.len(),
                self.bytes
            )));
        }
        let mut index = mac;
        index.truncate(self.bytes);
        Ok(IndexValue { key_version, index })
    }

    /// The index of one normalised value under the primary version.
    pub async fn compute(&self, normalised: &[u8]) -> Result<IndexValue, Error> {
        self.compute_at(normalised, 0).await
    }

    /// The index of one normalised value under `key_version` (0: the
    /// primary): a lookup across a rotation computes the query under each
    /// version its rows still carry.
    pub async fn compute_at(&self, normalised: &[u8], key_version: u32) -> Result<IndexValue, Error> {
        let r = self
            .client
            .mac(proto::MacRequest {
                key: self.key.clone(),
                data: normalised.to_vec(),
                key_version,
            })
            .await?;
        self.truncate(r.mac, r.key_version)
    }

    /// The indexes of many normalised values (a bulk load or re-index),
    /// in order, through `MacBatch` in chunks of [`BATCH_ITEMS`]. The first
    /// item that fails fails the whole call, naming its position.
    pub async fn compute_many<T: AsRef<[u8]>>(&self, normalised: &[T]) -> Result<Vec<IndexValue>, Error> {
        let mut out = Vec::with_capacity(normalised.len());
        for (c, chunk) in normalised.chunks(BATCH_ITEMS).enumerate() {
            let items = chunk
                .iter()
                .map(|v| proto::MacRequest {
                    key: self.key.clone(),
                    data: v.as_ref().to_vec(),
                    key_version: 0,
                })
                .collect();
            let r = self.client.mac_batch(proto::MacBatchRequest { items }).await?;
            if r.items.len() != chunk.len() {
                return Err(Error::Settings(format!(
                    "MacBatch answered {} items for {}",
                    r.items.len(),
                    chunk.len()
                )));
            }
            for (i, item) in r.items.into_iter().enumerate() {
                match item.result {
                    Some(proto::mac_batch_item::Result::Ok(m)) => out.push(self.truncate(m.mac, m.key_version)?),
                    Some(proto::mac_batch_item::Result::Error(e)) => {
                        return Err(Error::Status(Box::new(tonic::Status::new(
                            tonic::Code::from(e.code),
                            format!("blind index item {}: {}", c * BATCH_ITEMS + i, e.message),
                        ))))
                    }
                    None => {
                        return Err(Error::Settings(format!(
                            "MacBatch item {} has no result",
                            c * BATCH_ITEMS + i
                        )))
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_keep_their_digits_only() {
        assert_eq!(card_number_digits("4111 1111 1111 1111").unwrap(), "4111111111111111");
        assert_eq!(card_number_digits("4111-1111-1111-1111").unwrap(), "4111111111111111");
        for bad in [
            "4111 1111 111",
            "4111x1111111111111",
            "41111111111111111111",
            "",
            "٤١١١١١١١١١١١١١١١",
        ] {
            assert!(card_number_digits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_values_print_their_version() {
        let v = IndexValue {
            key_version: 3,
            index: vec![0xab, 0x01],
        };
        assert_eq!(v.to_text(), "3:ab01");
    }
}
