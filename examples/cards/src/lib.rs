//! An internal service's card vault: customers' card numbers (PANs) kept
//! in a SQLite database, each sealed with kmsd envelope encryption
//! (`kmsd_client::Envelopes`) with its row id as associated data, and a
//! tokenized last four digits for search.
//!
//! - **Per-row binding**: the associated data is `cards/v1/row/<id>`, so a
//!   sealed PAN copied or moved to another row (a confused-deputy or
//!   SQL-injection attempt to read card A through row B) fails to open.
//! - **Search by last four**: `last4_token` is kmsd's deterministic
//!   `Tokenize` of the last four digits under key `cards.last4` (kind
//!   `SECRET`): equal digits give equal tokens, so the column is indexed and
//!   searched by tokenizing the query; the key stays in kmsd, so the
//!   database alone does not reveal the digits. (Four digits have only
//!   10,000 values: anyone who may call `Tokenize` on that key can build
//!   the table, so grant it only to this service. Tokens change when the
//!   key rotates: keep that key's rotation manual, or re-index.)
//! - **Search by card number**: a blind index (docs/blind-indexes.md):
//!   `pan_index` is the HMAC-SHA256 of the number's digits under key
//!   `cards.pan-index` (an `HMAC_SHA256` key used for nothing else),
//!   truncated to [`PAN_INDEX_BYTES`], stored with the key version that
//!   made it (`kmsd_client::blind_index`). [`CardVault::find_by_pan`]
//!   computes the query's index under each version in the table, selects
//!   those rows, decrypts only them and compares the numbers (a truncated
//!   index has false positives by design).
//! - **Caching**: one data key seals many rows (`CacheLimits`), so adding a
//!   card costs a `Tokenize` call and, at most every `max_messages` rows, a
//!   `GenerateDataKey`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use kmsd_client::blind_index::BlindIndex;
use kmsd_client::proto::{self, DataKind};
use kmsd_client::{Client, Envelopes};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

/// The kmsd key the PANs' data keys are wrapped under.
pub const PAN_KEY: &str = "cards.pan";
/// The kmsd key the last four digits are tokenized under.
pub const INDEX_KEY: &str = "cards.last4";
/// The kmsd MAC key of the card numbers' blind index.
pub const PAN_INDEX_KEY: &str = "cards.pan-index";
/// Bytes of the MAC kept in the blind index: 8 (64 bits; about 5·10^-13
/// false rows per lookup at 10^7 cards, see docs/blind-indexes.md).
pub const PAN_INDEX_BYTES: usize = 8;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a card number: 12 to 19 digits passing the Luhn check.
    #[error("not a card number (12-19 digits passing Luhn)")]
    NotAPan,
    /// No card with that id.
    #[error("no card {0}")]
    NoSuchCard(i64),
    /// The database.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// kmsd (the call or the envelope).
    #[error("kmsd: {0}")]
    Kms(#[from] kmsd_client::Error),
}

/// A customer's card as listed by a search (no PAN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRef {
    /// Row id.
    pub id: i64,
    /// The customer.
    pub customer: String,
}

/// The vault: a SQLite database and a kmsd client.
pub struct CardVault {
    // rusqlite's Connection is not Sync; never locked across an await
    db: Mutex<Connection>,
    envelopes: Envelopes,
    pan_index: BlindIndex,
    client: Client,
}

/// The associated data of row `id`.
pub fn row_aad(id: i64) -> Vec<u8> {
    format!("cards/v1/row/{id}").into_bytes()
}

/// The PAN's digits, if it is one (spaces and dashes ignored).
pub fn normalize_pan(pan: &str) -> Result<String, Error> {
    let digits: String = pan.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !(12..=19).contains(&digits.len())
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !kmsd_masking::luhn::is_valid(digits.as_bytes())
    {
        return Err(Error::NotAPan);
    }
    Ok(digits)
}

impl CardVault {
    /// Opens (or creates) the database at `path`; `envelopes` seals and
    /// opens, `expect_keys` restricted to [`PAN_KEY`].
    pub fn open(path: &Path, client: Client) -> Result<CardVault, Error> {
        let db = Connection::open(path)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS cards (
                 id INTEGER PRIMARY KEY,
                 customer TEXT NOT NULL,
                 pan_sealed BLOB NOT NULL,
                 last4_token TEXT NOT NULL,
                 pan_index BLOB NOT NULL,
                 pan_index_version INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS cards_last4 ON cards (last4_token);
             CREATE INDEX IF NOT EXISTS cards_pan_index ON cards (pan_index_version, pan_index);",
        )?;
        Ok(CardVault {
            db: Mutex::new(db),
            envelopes: Envelopes::new(client.clone()).expect_keys([PAN_KEY]),
            pan_index: BlindIndex::new(client.clone(), PAN_INDEX_KEY, PAN_INDEX_BYTES)?,
            client,
        })
    }

    /// Creates the three kmsd keys if they do not exist.
    pub async fn create_keys(&self) -> Result<(), Error> {
        for (name, algorithm) in [
            (PAN_KEY, proto::Algorithm::Aes256Gcm),
            (INDEX_KEY, proto::Algorithm::Aes256Gcm),
            (PAN_INDEX_KEY, proto::Algorithm::HmacSha256),
        ] {
            match self
                .client
                .create_key(proto::CreateKeyRequest {
                    name: name.into(),
                    algorithm: algorithm as i32,
                    ..Default::default()
                })
                .await
            {
                Ok(_) | Err(kmsd_client::Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn last4_token(&self, last4: &str) -> Result<String, Error> {
        let r = self
            .client
            .tokenize(proto::TokenizeRequest {
                key: INDEX_KEY.into(),
                value: last4.into(),
                kind: DataKind::Secret as i32,
            })
            .await?;
        Ok(r.token)
    }

    /// Stores a customer's card; returns its row id.
    pub async fn add(&self, customer: &str, pan: &str) -> Result<i64, Error> {
        let pan = normalize_pan(pan)?;
        let token = self.last4_token(pan.get(pan.len() - 4..).unwrap_or_default()).await?;
        let index = self.pan_index.compute(pan.as_bytes()).await?;
        // the row id is the associated data, so take it first
        let id = {
            let db = self.db();
            db.execute(
                "INSERT INTO cards (customer, pan_sealed, last4_token, pan_index, pan_index_version)
                 VALUES (?1, x'', ?2, ?3, ?4)",
                params![customer, token, index.index, index.key_version],
            )?;
            db.last_insert_rowid()
        };
        let sealed = match self.envelopes.seal(PAN_KEY, pan.as_bytes(), &row_aad(id)).await {
            Ok(s) => s,
            Err(e) => {
                self.db().execute("DELETE FROM cards WHERE id = ?1", params![id])?;
                return Err(e.into());
            }
        };
        self.db()
            .execute("UPDATE cards SET pan_sealed = ?1 WHERE id = ?2", params![sealed, id])?;
        Ok(id)
    }

    /// The card number of row `id`.
    pub async fn pan(&self, id: i64) -> Result<String, Error> {
        let sealed: Vec<u8> = self
            .db()
            .query_row("SELECT pan_sealed FROM cards WHERE id = ?1", params![id], |r| r.get(0))
            .optional()?
            .ok_or(Error::NoSuchCard(id))?;
        let pan = self.envelopes.open(&sealed, &row_aad(id)).await?;
        String::from_utf8(pan).map_err(|_| Error::NotAPan)
    }

    /// The cards with card number `pan` (any spacing), by its blind index:
    /// the query's index under each key version in the table, then the
    /// candidates decrypted and compared (false positives dropped).
    pub async fn find_by_pan(&self, pan: &str) -> Result<Vec<CardRef>, Error> {
        let pan = normalize_pan(pan)?;
        let versions: Vec<u32> = {
            let db = self.db();
            let mut st = db.prepare("SELECT DISTINCT pan_index_version FROM cards ORDER BY 1")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut candidates = Vec::new();
        for v in versions {
            let index = self.pan_index.compute_at(pan.as_bytes(), v).await?;
            let db = self.db();
            let mut st = db.prepare(
                "SELECT id, customer FROM cards WHERE pan_index_version = ?1 AND pan_index = ?2 ORDER BY id",
            )?;
            let rows = st.query_map(params![v, index.index], |r| {
                Ok(CardRef {
                    id: r.get(0)?,
                    customer: r.get(1)?,
                })
            })?;
            candidates.extend(rows.collect::<Result<Vec<_>, _>>()?);
        }
        let mut found = Vec::new();
        for c in candidates {
            if self.pan(c.id).await? == pan {
                found.push(c);
            }
        }
        found.sort_by_key(|c| c.id);
        Ok(found)
    }

    /// Recomputes every row's blind index under the index key's primary
    /// version (after a rotation), in bulk through `MacBatch`; returns how
    /// many rows were re-indexed.
    pub async fn reindex(&self) -> Result<usize, Error> {
        let ids: Vec<i64> = {
            let db = self.db();
            let mut st = db.prepare("SELECT id FROM cards ORDER BY id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut pans = Vec::with_capacity(ids.len());
        for id in &ids {
            pans.push(self.pan(*id).await?);
        }
        let indexes = self.pan_index.compute_many(&pans).await?;
        let mut db = self.db();
        let tx = db.transaction()?;
        for (id, index) in ids.iter().zip(&indexes) {
            tx.execute(
                "UPDATE cards SET pan_index = ?1, pan_index_version = ?2 WHERE id = ?3",
                params![index.index, index.key_version, id],
            )?;
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// The cards whose number ends in `last4`.
    pub async fn find_by_last4(&self, last4: &str) -> Result<Vec<CardRef>, Error> {
        if last4.len() != 4 || !last4.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::NotAPan);
        }
        let token = self.last4_token(last4).await?;
        let db = self.db();
        let mut st = db.prepare("SELECT id, customer FROM cards WHERE last4_token = ?1 ORDER BY id")?;
        let rows = st.query_map(params![token], |r| {
            Ok(CardRef {
                id: r.get(0)?,
                customer: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pans_are_checked() {
        assert_eq!(normalize_pan("4111 1111 1111 1111").unwrap(), "4111111111111111");
        assert!(normalize_pan("4111 1111 1111 1112").is_err());
        assert!(normalize_pan("12345").is_err());
        assert!(normalize_pan("4111-1111-1111-111a").is_err());
    }
}
