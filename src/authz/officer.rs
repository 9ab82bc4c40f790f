//! Officer enrolment: each officer's TOTP secret, sealed into the store
//! (enrolled directly, or offered and then claimed once by the officer's
//! own certificate), and the names of the records that hold them.
use super::otp::TotpSecret;
use crate::error::{Error, Missing};
use kmsd_keystore::{KeyStore, RecordKind, Sealer};

/// Record name of an officer's sealed TOTP secret.
pub(super) fn totp_record(identity: &str) -> String {
    format!("totp:{identity}")
}

/// Record name of a new TOTP secret waiting for its officer to claim it.
fn offer_record(identity: &str) -> String {
    format!("totp-offer:{identity}")
}

/// Record name of an officer's sealed replay and lock-out memory.
pub(super) const TOTP_STATE_PREFIX: &str = "totp-state:";

/// Enrols (or re-enrols) an officer: a fresh TOTP secret sealed into the store.
pub fn enroll(store: &dyn KeyStore, sealer: &Sealer, identity: &str, replace: bool) -> Result<TotpSecret, Error> {
    let name = totp_record(identity);
    let secret = TotpSecret::generate();
    let sealed = secret.seal_with(sealer, RecordKind::Secret, &name, &[])?;
    let expected = match store.get(RecordKind::Secret, &name)? {
        Some(_) if !replace => return Err(Error::KeyExists(format!("officer {identity}"))),
        Some(e) => Some(e.revision),
        None => None,
    };
    store.put(RecordKind::Secret, &name, expected, &sealed)?;
    Ok(secret)
}

/// Seals a new TOTP secret for `identity` to claim (once, with its own
/// certificate) until `claim_by`; an offer not yet claimed is replaced.
/// Refused if the identity is enrolled and `replace` is not set.
pub fn offer_enrolment(
    store: &dyn KeyStore,
    sealer: &Sealer,
    identity: &str,
    replace: bool,
    claim_by: i64,
) -> Result<(), Error> {
    if !replace && store.get(RecordKind::Secret, &totp_record(identity))?.is_some() {
        return Err(Error::KeyExists(format!("officer {identity}")));
    }
    let name = offer_record(identity);
    let secret = TotpSecret::generate();
    let sealed = secret.seal_with(sealer, RecordKind::Secret, &name, &claim_by.to_be_bytes())?;
    let expected = store.get(RecordKind::Secret, &name)?.map(|e| e.revision);
    store.put(RecordKind::Secret, &name, expected, &sealed)?;
    Ok(())
}

/// Takes the secret waiting for `identity` (once: the offer is deleted
/// first) and makes it the officer's enrolment.
pub fn claim_enrolment(store: &dyn KeyStore, sealer: &Sealer, identity: &str, now: i64) -> Result<TotpSecret, Error> {
    let name = offer_record(identity);
    let nothing = || {
        Error::NotFound(Missing::Enrolment {
            identity: identity.to_owned(),
        })
    };
    let entry = store.get(RecordKind::Secret, &name)?.ok_or_else(nothing)?;
    let offer = TotpSecret::open_sealed(sealer, RecordKind::Secret, &name, &entry.value, 8)?;
    store.delete(RecordKind::Secret, &name, entry.revision)?;
    let (claim_by, secret) = offer.ok_or_else(|| Error::Corrupt(name.clone()))?;
    let claim_by = i64::from_be_bytes(claim_by.try_into().map_err(|_| Error::Corrupt(name.clone()))?);
    if claim_by <= now {
        return Err(nothing());
    }
    let record = totp_record(identity);
    let expected = store.get(RecordKind::Secret, &record)?.map(|e| e.revision);
    store.put(
        RecordKind::Secret,
        &record,
        expected,
        &secret.seal_with(sealer, RecordKind::Secret, &record, &[])?,
    )?;
    Ok(secret)
}
