//! Conversions between the `kmsd.v1` messages and the keystore's domain
//! types (key metadata, policies, purposes, version states). Metadata
//! only: no key material passes through here.
use crate::error::{Error, Invalid};
use crate::proto;
use crate::rings::{PolicyUpdate, Usage};
use kmsd_keystore::keyring::{KeyPolicy, KeyPurpose, RotationReason};
use kmsd_keystore::{Algorithm, KeyOrigin, KeyRing, VersionState};

/// The keystore algorithm an API value names (unset = AES-256-GCM).
pub fn algorithm_from_proto(a: i32) -> Result<Algorithm, Error> {
    Ok(match proto::Algorithm::try_from(a) {
        Ok(proto::Algorithm::Unspecified | proto::Algorithm::Aes256Gcm) => Algorithm::Aes256Gcm,
        Ok(proto::Algorithm::HmacSha256) => Algorithm::HmacSha256,
        Ok(proto::Algorithm::HmacSha512) => Algorithm::HmacSha512,
        Ok(proto::Algorithm::EcdsaP256Sha256) => Algorithm::EcdsaP256Sha256,
        Ok(proto::Algorithm::RsaPss3072Sha256) => Algorithm::RsaPss3072Sha256,
        Ok(proto::Algorithm::RsaPss4096Sha256) => Algorithm::RsaPss4096Sha256,
        Ok(proto::Algorithm::Ed25519) => Algorithm::Ed25519,
        Err(_) => return Err(Error::InvalidArgument(Invalid::Algorithm)),
    })
}

/// The API value of a keystore algorithm.
pub fn algorithm_to_proto(a: Algorithm) -> proto::Algorithm {
    match a {
        Algorithm::HmacSha256 => proto::Algorithm::HmacSha256,
        Algorithm::HmacSha512 => proto::Algorithm::HmacSha512,
        Algorithm::EcdsaP256Sha256 => proto::Algorithm::EcdsaP256Sha256,
        Algorithm::RsaPss3072Sha256 => proto::Algorithm::RsaPss3072Sha256,
        Algorithm::RsaPss4096Sha256 => proto::Algorithm::RsaPss4096Sha256,
        Algorithm::Ed25519 => proto::Algorithm::Ed25519,
        _ => proto::Algorithm::Aes256Gcm,
    }
}

fn policy_to_proto(p: &KeyPolicy, purpose: KeyPurpose) -> proto::KeyPolicy {
    proto::KeyPolicy {
        purpose: Some(match purpose {
            KeyPurpose::EncryptDecrypt => proto::KeyPurpose::EncryptDecrypt,
            KeyPurpose::Tokenize => proto::KeyPurpose::Tokenize,
            KeyPurpose::Mac => proto::KeyPurpose::Mac,
            KeyPurpose::SignVerify => proto::KeyPurpose::SignVerify,
        } as i32),
        allow_token_rotation: Some(p.allow_token_rotation),
        rotation_period_seconds: Some(p.rotation_period_secs.unwrap_or(0)),
        max_encryptions_per_version: Some(p.max_encryptions_per_version.unwrap_or(0)),
        min_decryption_version: Some(p.min_decryption_version),
        min_encryption_version: Some(p.min_encryption_version),
        deletion_allowed: Some(p.deletion_allowed),
        manual_rotation_resets_schedule: Some(p.manual_rotation_resets_schedule),
        allow_generated_rotation: Some(p.allow_generated_rotation),
    }
}

/// The policy change a message asks for: its set fields (none when the
/// message is absent). The purpose is not part of it (fixed at creation;
/// see [`purpose_from_proto`]).
pub fn policy_update(update: Option<&proto::KeyPolicy>) -> PolicyUpdate {
    let Some(u) = update else {
        return PolicyUpdate::default();
    };
    PolicyUpdate {
        rotation_period_secs: u.rotation_period_seconds,
        max_encryptions_per_version: u.max_encryptions_per_version,
        min_decryption_version: u.min_decryption_version,
        min_encryption_version: u.min_encryption_version,
        deletion_allowed: u.deletion_allowed,
        manual_rotation_resets_schedule: u.manual_rotation_resets_schedule,
        allow_token_rotation: u.allow_token_rotation,
        allow_generated_rotation: u.allow_generated_rotation,
    }
}

/// The purpose named by a policy message for a key of `algorithm`
/// (unset = the algorithm's own: encrypt/decrypt, MAC or sign/verify);
/// one the algorithm does not have is INVALID_ARGUMENT.
pub fn purpose_from_proto(update: Option<&proto::KeyPolicy>, algorithm: Algorithm) -> Result<KeyPurpose, Error> {
    let purpose = match update.and_then(|u| u.purpose).map(proto::KeyPurpose::try_from) {
        None | Some(Ok(proto::KeyPurpose::Unspecified)) => return Ok(algorithm.default_purpose()),
        Some(Ok(proto::KeyPurpose::EncryptDecrypt)) => KeyPurpose::EncryptDecrypt,
        Some(Ok(proto::KeyPurpose::Tokenize)) => KeyPurpose::Tokenize,
        Some(Ok(proto::KeyPurpose::Mac)) => KeyPurpose::Mac,
        Some(Ok(proto::KeyPurpose::SignVerify)) => KeyPurpose::SignVerify,
        Some(Err(_)) => return Err(Error::InvalidArgument(Invalid::UnknownPurpose)),
    };
    if !algorithm.allows(purpose) {
        return Err(Error::InvalidArgument(Invalid::AlgorithmPurpose {
            algorithm: algorithm.as_str(),
            purpose: purpose.as_str(),
        }));
    }
    Ok(purpose)
}

/// Key metadata for the API: never material.
pub fn key_info(ring: &KeyRing, usage: &[Usage]) -> proto::KeyInfo {
    proto::KeyInfo {
        name: ring.name.to_string(),
        algorithm: algorithm_to_proto(ring.algorithm) as i32,
        primary_version: ring.primary,
        created_at: ring.created_at,
        versions: ring
            .versions
            .iter()
            .map(|v| {
                let live = usage.get(v.version as usize - 1).copied();
                proto::KeyVersionInfo {
                    version: v.version,
                    state: version_state(v.state) as i32,
                    created_at: v.created_at,
                    destroy_at: v.destroy_at.unwrap_or(0),
                    encryptions: live.map_or(v.encryptions_reserved, |u| u.encryptions),
                    decryptions: live.map_or(0, |u| u.decryptions).max(v.decryptions),
                    last_used_at: live.map_or(0, |u| u.last_used_at).max(v.last_used_at.unwrap_or(0)),
                    origin: match v.origin {
                        KeyOrigin::Generated => proto::KeyOrigin::Generated,
                        KeyOrigin::Imported => proto::KeyOrigin::Imported,
                    } as i32,
                }
            })
            .collect(),
        policy: Some(policy_to_proto(&ring.policy, ring.purpose)),
        next_rotation_at: ring.next_rotation_at.unwrap_or(0),
        rotations: ring
            .rotations
            .iter()
            .map(|e| proto::RotationEvent {
                at: e.at,
                from_version: e.from_version,
                to_version: e.to_version,
                reason: match e.reason {
                    RotationReason::Manual => proto::RotationReason::Manual,
                    RotationReason::Scheduled => proto::RotationReason::Scheduled,
                    RotationReason::Usage => proto::RotationReason::Usage,
                    RotationReason::Import => proto::RotationReason::Import,
                } as i32,
            })
            .collect(),
        delete_at: ring.delete_at.unwrap_or(0),
        exportable: ring.exportable,
    }
}

fn version_state(s: VersionState) -> proto::VersionState {
    match s {
        VersionState::Active => proto::VersionState::Active,
        VersionState::DecryptOnly => proto::VersionState::DecryptOnly,
        VersionState::Disabled => proto::VersionState::Disabled,
        VersionState::ScheduledForDestruction => proto::VersionState::ScheduledForDestruction,
        VersionState::Destroyed => proto::VersionState::Destroyed,
    }
}
