//! `kmsd officer-enroll`: seal a fresh TOTP second factor for an officer
//! (how the first officer gets one; later ones enrol through the API).
use super::text;
use crate::config::Config;

/// An officer just enrolled. Holds the otpauth URI, which carries the TOTP
/// secret: shown once to the operator, never logged (no `Debug`).
pub struct Enrolled {
    identity: String,
    uri: String,
}

impl std::fmt::Display for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "officer {} enrolled; add to the authenticator app, then discard:",
            self.identity
        )?;
        write!(f, "{}", self.uri)
    }
}

/// Enrols `identity` (replacing an existing enrolment only with `replace`)
/// and syncs the store.
pub fn officer_enrol(cfg: &Config, identity: &str, replace: bool) -> Result<Enrolled, String> {
    let rings = crate::server::open_rings(cfg).map_err(text)?;
    let secret =
        crate::authz::officer::enroll(rings.raw().as_ref(), rings.sealer(), identity, replace).map_err(text)?;
    rings.raw().sync().map_err(text)?;
    Ok(Enrolled {
        identity: identity.to_owned(),
        uri: secret.otpauth_uri(identity),
    })
}
