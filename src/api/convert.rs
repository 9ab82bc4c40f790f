//! Conversions between the `kmsd.v1` messages and the keystore's domain
//! types (key metadata, policies, purposes, version states). Metadata
//! only: no key material passes through here.
use crate::error::{Error, Invalid};
use crate::proto;
use crate::rings::{PolicyUpdate, Usage};
use kmsd_keystore::keyring::{KeyPolicy, KeyPurpose, RotationReason};
use kmsd_keystore::{KeyRing, VersionState};

fn policy_to_proto(p: &KeyPolicy, purpose: KeyPurpose) -> proto::KeyPolicy {
    proto::KeyPolicy {
        purpose: Some(match purpose {
            KeyPurpose::EncryptDecrypt => proto::KeyPurpose::EncryptDecrypt,
            KeyPurpose::Tokenize => proto::KeyPurpose::Tokenize,
        } as i32),
        allow_token_rotation: Some(p.allow_token_rotation),
        rotation_period_seconds: Some(p.rotation_period_secs.unwrap_or(0)),
        max_encryptions_per_version: Some(p.max_encryptions_per_version.unwrap_or(0)),
        min_decryption_version: Some(p.min_decryption_version),
        min_encryption_version: Some(p.min_encryption_version),
        deletion_allowed: Some(p.deletion_allowed),
        manual_rotation_resets_schedule: Some(p.manual_rotation_resets_schedule),
        allow_generated_rotation: None,
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
    }
}

/// The purpose named by a policy message (unset = encrypt/decrypt).
pub fn purpose_from_proto(update: Option<&proto::KeyPolicy>) -> Result<KeyPurpose, Error> {
    match update.and_then(|u| u.purpose).map(proto::KeyPurpose::try_from) {
        None | Some(Ok(proto::KeyPurpose::Unspecified | proto::KeyPurpose::EncryptDecrypt)) => {
            Ok(KeyPurpose::EncryptDecrypt)
        }
        Some(Ok(proto::KeyPurpose::Tokenize)) => Ok(KeyPurpose::Tokenize),
        // Issue 17: MAC and signing keys are not implemented yet.
        Some(Ok(proto::KeyPurpose::Mac | proto::KeyPurpose::SignVerify)) | Some(Err(_)) => {
            Err(Error::InvalidArgument(Invalid::UnknownPurpose))
        }
    }
}

/// Key metadata for the API: never material.
pub fn key_info(ring: &KeyRing, usage: &[Usage]) -> proto::KeyInfo {
    proto::KeyInfo {
        name: ring.name.to_string(),
        algorithm: proto::Algorithm::Aes256Gcm as i32,
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
                    origin: proto::KeyOrigin::Generated as i32,
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
                } as i32,
            })
            .collect(),
        delete_at: ring.delete_at.unwrap_or(0),
        exportable: false,
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
