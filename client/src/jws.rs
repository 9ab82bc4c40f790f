//! JWS (RFC 7515) with a signing key that never leaves kmsd: compact
//! serialisation, and the detached form of RFC 7515 Appendix F
//! (`header..signature`, Open Banking's `x-jws-signature`).
//!
//! [`Client::sign_jws`] builds the protected header — `alg` from the key's
//! algorithm (`ES256` for `ECDSA_P256_SHA256`, with the signature asked in
//! IEEE P1363 form `r || s` as JWS requires; `PS256` for both RSA-PSS
//! sizes; `EdDSA` for `ED25519`), `kid` = `"<key>/<version>"` (as
//! `GetPublicKey` names it), an optional `typ`, then the caller's extra
//! parameters in the order given — and has kmsd sign
//! `BASE64URL(header) || '.' || BASE64URL(payload)` (for ES256 and PS256
//! its SHA-256 digest is sent, so a payload of any size costs 32 bytes on
//! the wire; Ed25519 signs the message itself, within the daemon's message
//! limit).
//!
//! **The version in `kid` is the version that signed.** `Sign` uses the
//! primary version and says which one it was; the header must name it
//! before signing. So the helper reads the primary version
//! (`GetPublicKey`), builds the header, signs, and compares the response's
//! version with the header's: after a rotation in between they differ, and
//! it signs again with the new `kid` (at most [`SIGN_ATTEMPTS`] times, then
//! [`Error::Jws`]). A JWS is never returned whose `kid` names another
//! version than the one that signed it.
//!
//! [`Client::verify_jws`] reads `kid`, asks `GetPublicKey` for that
//! version's algorithm and refuses a header whose `alg` is not the key's
//! (no algorithm confusion, and `none` is never accepted), refuses `crit`
//! parameters the caller does not say it understands (RFC 7515 4.1.11),
//! then has kmsd verify under the version named in `kid`.
//!
//! Not supported (refused, never silently mis-signed): the unencoded
//! payload option `b64: false` (RFC 7797; Open Banking dropped it in
//! version 3.1.4), a caller-set `alg` or `kid`, HMAC keys (`HS256`: use
//! `Mac`).
use crate::client::Client;
use crate::error::Error;
use crate::proto;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::Value;

/// How many times [`Client::sign_jws`] signs when rotations keep moving the
/// primary version between reading it and signing.
pub const SIGN_ATTEMPTS: u32 = 3;

/// Largest protected header [`Client::verify_jws`] reads (decoded JSON).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Largest number of extra header parameters [`Client::sign_jws`] takes.
pub const MAX_EXTRA_PARAMETERS: usize = 64;

/// The header parameters the helper sets itself or does not support.
const RESERVED: &[&str] = &["alg", "kid", "b64"];

/// What goes into the protected header besides `alg` and `kid`, and whether
/// the payload is detached.
#[derive(Debug, Clone, Default)]
pub struct JwsOptions {
    /// `typ` (for example `JOSE` or `JWT`); left out when `None`.
    pub typ: Option<String>,
    /// Further protected header parameters, in this order (Open Banking:
    /// `http://openbanking.org.uk/iat` (a number), `…/iss`, `…/tan`, and
    /// `crit` naming them). `alg`, `kid` and `b64` are refused.
    pub extra: Vec<(String, Value)>,
    /// `header..signature` (RFC 7515 Appendix F): the payload is signed as
    /// usual but left out of the serialisation.
    pub detached: bool,
}

impl JwsOptions {
    /// Sets `typ`.
    pub fn typ(mut self, typ: impl Into<String>) -> Self {
        self.typ = Some(typ.into());
        self
    }

    /// Adds a protected header parameter.
    pub fn header(mut self, name: impl Into<String>, value: Value) -> Self {
        self.extra.push((name.into(), value));
        self
    }

    /// Detaches the payload.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }
}

/// A JWS made by [`Client::sign_jws`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedJws {
    /// The compact serialisation (`header.payload.signature`, or
    /// `header..signature` when detached).
    pub jws: String,
    /// `"<key>/<version>"`, as in the header.
    pub kid: String,
    /// The key version that signed (the one in `kid`).
    pub key_version: u32,
    /// The header's `alg`.
    pub alg: &'static str,
}

/// A JWS that [`Client::verify_jws`] found valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedJws {
    /// The protected header, as JSON.
    pub header: serde_json::Map<String, Value>,
    /// The payload (the detached one when the JWS had none).
    pub payload: Vec<u8>,
    /// The key named by `kid`.
    pub key: String,
    /// The version named by `kid`.
    pub key_version: u32,
}

fn jws_err(msg: impl Into<String>) -> Error {
    Error::Jws(msg.into())
}

/// The JWS `alg` of a kmsd key algorithm, if it signs.
pub fn jws_alg(algorithm: proto::Algorithm) -> Option<&'static str> {
    use proto::Algorithm as A;
    match algorithm {
        A::EcdsaP256Sha256 => Some("ES256"),
        A::RsaPss3072Sha256 | A::RsaPss4096Sha256 => Some("PS256"),
        A::Ed25519 => Some("EdDSA"),
        _ => None,
    }
}

/// `"<key>/<version>"`, the `kid` of a key version (as `GetPublicKey`).
pub fn kid(key: &str, version: u32) -> String {
    format!("{key}/{version}")
}

/// Splits a `kid` into key name and version (the version after the last
/// `/`; key names may not contain `/`, but the split does not rely on it).
pub fn parse_kid(kid: &str) -> Result<(&str, u32), Error> {
    let (key, version) = kid
        .rsplit_once('/')
        .ok_or_else(|| jws_err(format!("kid {kid:?} is not \"<key>/<version>\"")))?;
    let version: u32 = version
        .parse()
        .ok()
        .filter(|v| *v > 0 && !key.is_empty())
        .ok_or_else(|| jws_err(format!("kid {kid:?} is not \"<key>/<version>\"")))?;
    Ok((key, version))
}

/// Checks the extra parameters: no reserved or repeated names, at most
/// [`MAX_EXTRA_PARAMETERS`], and a `crit` that is a non-empty array of
/// names present in the header and not registered by RFC 7515.
fn check_extra(opts: &JwsOptions) -> Result<(), Error> {
    if opts.extra.len() > MAX_EXTRA_PARAMETERS {
        return Err(jws_err(format!(
            "{} header parameters (at most {MAX_EXTRA_PARAMETERS})",
            opts.extra.len()
        )));
    }
    let mut seen: Vec<&str> = vec!["alg", "kid"];
    if opts.typ.is_some() {
        seen.push("typ");
    }
    for (name, _) in &opts.extra {
        if name.is_empty() {
            return Err(jws_err("an empty header parameter name"));
        }
        if RESERVED.contains(&name.as_str()) {
            return Err(jws_err(format!(
                "header parameter {name:?} is set by the helper or not supported (b64: RFC 7797 is not)"
            )));
        }
        if seen.contains(&name.as_str()) {
            return Err(jws_err(format!("header parameter {name:?} given twice")));
        }
        seen.push(name);
    }
    if let Some((_, crit)) = opts.extra.iter().find(|(n, _)| n == "crit") {
        check_crit(crit, &seen)?;
    }
    Ok(())
}

/// RFC 7515 4.1.11: `crit` is a non-empty array of distinct names, each a
/// parameter of this header and none of those RFC 7515/7518 define.
fn check_crit(crit: &Value, present: &[&str]) -> Result<Vec<String>, Error> {
    const REGISTERED: &[&str] = &[
        "alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit", "enc", "zip",
    ];
    let names = crit
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| jws_err("crit must be a non-empty array of header parameter names"))?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let n = n
            .as_str()
            .ok_or_else(|| jws_err("crit must be a non-empty array of header parameter names"))?;
        if REGISTERED.contains(&n) {
            return Err(jws_err(format!("crit names {n:?}, which RFC 7515 defines")));
        }
        if !present.contains(&n) {
            return Err(jws_err(format!("crit names {n:?}, which is not in the header")));
        }
        if out.iter().any(|o| o == n) {
            return Err(jws_err(format!("crit names {n:?} twice")));
        }
        out.push(n.to_owned());
    }
    Ok(out)
}

/// The protected header's JSON: `alg`, `kid`, `typ`, then the extras, in
/// that order.
fn header_json(alg: &str, kid: &str, opts: &JwsOptions) -> String {
    let mut fields = vec![
        ("alg".to_owned(), Value::from(alg)),
        ("kid".to_owned(), Value::from(kid)),
    ];
    if let Some(t) = &opts.typ {
        fields.push(("typ".to_owned(), Value::from(t.as_str())));
    }
    fields.extend(opts.extra.iter().cloned());
    let parts: Vec<String> = fields
        .iter()
        .map(|(n, v)| format!("{}:{}", Value::from(n.as_str()), v))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// `BASE64URL(header) . BASE64URL(payload)`, the bytes that are signed.
fn signing_input(header_b64: &str, payload: &[u8]) -> String {
    format!("{header_b64}.{}", B64.encode(payload))
}

/// What kmsd signs: for ES256 and PS256 the SHA-256 digest of the signing
/// input, computed here (the same signature; 32 bytes on the wire whatever
/// the payload's size); Ed25519 signs the message itself.
fn sign_input(alg: &str, input: Vec<u8>) -> proto::sign_request::Input {
    use sha2::Digest as _;
    if alg == "EdDSA" {
        proto::sign_request::Input::Message(input)
    } else {
        proto::sign_request::Input::Digest(sha2::Sha256::digest(&input).to_vec())
    }
}

/// The parts of a compact JWS, decoded.
struct Parsed<'a> {
    header_b64: &'a str,
    header: serde_json::Map<String, Value>,
    payload_b64: &'a str,
    signature: Vec<u8>,
}

fn parse_compact(jws: &str) -> Result<Parsed<'_>, Error> {
    let mut it = jws.trim().split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(jws_err("not a compact JWS (three base64url parts separated by '.')"));
    };
    if h.len() > MAX_HEADER_BYTES * 4 / 3 + 4 {
        return Err(jws_err(format!(
            "the protected header is over {MAX_HEADER_BYTES} bytes"
        )));
    }
    let header_bytes = B64
        .decode(h)
        .map_err(|_| jws_err("the protected header is not base64url"))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&header_bytes).map_err(|_| jws_err("the protected header is not a JSON object"))?;
    let signature = B64.decode(s).map_err(|_| jws_err("the signature is not base64url"))?;
    Ok(Parsed {
        header_b64: h,
        header,
        payload_b64: p,
        signature,
    })
}

impl Client {
    /// Signs `payload` as a JWS with `key` (see the [module](self)):
    /// compact, or detached with [`JwsOptions::detached`].
    pub async fn sign_jws(&self, key: &str, payload: &[u8], opts: &JwsOptions) -> Result<SignedJws, Error> {
        check_extra(opts)?;
        let public = self
            .get_public_key(proto::GetPublicKeyRequest {
                key: key.to_owned(),
                key_version: 0,
            })
            .await?;
        let mut version = public.key_version;
        let alg = jws_alg(public.algorithm()).ok_or_else(|| {
            jws_err(format!(
                "key {key} is {}, which has no JWS signature algorithm here (ES256, PS256, EdDSA)",
                public.algorithm().as_str_name()
            ))
        })?;
        let payload_b64 = B64.encode(payload);
        for _ in 0..SIGN_ATTEMPTS {
            let kid = kid(key, version);
            let header_b64 = B64.encode(header_json(alg, &kid, opts));
            let input = format!("{header_b64}.{payload_b64}");
            let resp = self
                .sign(proto::SignRequest {
                    key: key.to_owned(),
                    input: Some(sign_input(alg, input.into_bytes())),
                    encoding: proto::SignatureEncoding::P1363 as i32,
                })
                .await?;
            if jws_alg(resp.algorithm()) != Some(alg) {
                return Err(jws_err(format!(
                    "key {key} signed with {} where {alg} was expected",
                    resp.algorithm().as_str_name()
                )));
            }
            if resp.key_version != version {
                // rotated between reading the primary and signing: the
                // header names the wrong version; sign again naming this one
                version = resp.key_version;
                continue;
            }
            let body = if opts.detached { "" } else { payload_b64.as_str() };
            return Ok(SignedJws {
                jws: format!("{header_b64}.{body}.{}", B64.encode(&resp.signature)),
                kid,
                key_version: version,
                alg,
            });
        }
        Err(jws_err(format!(
            "key {key}'s primary version kept changing while signing ({SIGN_ATTEMPTS} attempts): try again"
        )))
    }

    /// Verifies a compact JWS made with a kmsd key (see the
    /// [module](self)). `detached_payload` is the payload of a
    /// `header..signature` JWS (refused for one that carries its own);
    /// `understood_crit` lists the `crit` parameters the caller checks
    /// itself. A JWS that does not verify is an [`Error::Jws`] saying so.
    pub async fn verify_jws(
        &self,
        jws: &str,
        detached_payload: Option<&[u8]>,
        understood_crit: &[&str],
    ) -> Result<VerifiedJws, Error> {
        let p = parse_compact(jws)?;
        let payload = match (p.payload_b64.is_empty(), detached_payload) {
            (true, Some(d)) => d.to_vec(),
            (true, None) => return Err(jws_err("the JWS is detached (header..signature): give the payload")),
            (false, None) => B64
                .decode(p.payload_b64)
                .map_err(|_| jws_err("the payload is not base64url"))?,
            (false, Some(_)) => {
                return Err(jws_err(
                    "the JWS carries its payload: a detached payload was also given",
                ))
            }
        };
        if p.header.get("b64").is_some() {
            return Err(jws_err("the header has b64 (RFC 7797), which is not supported"));
        }
        let alg = p
            .header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| jws_err("the header has no alg"))?
            .to_owned();
        let kid_text = p
            .header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| jws_err("the header has no kid"))?
            .to_owned();
        let (key, version) = parse_kid(&kid_text)?;
        if let Some(crit) = p.header.get("crit") {
            let present: Vec<&str> = p.header.keys().map(String::as_str).collect();
            for name in check_crit(crit, &present)? {
                if !understood_crit.contains(&name.as_str()) {
                    return Err(jws_err(format!(
                        "crit names {name:?}, which this verifier was not told it understands"
                    )));
                }
            }
        }
        let public = self
            .get_public_key(proto::GetPublicKeyRequest {
                key: key.to_owned(),
                key_version: version,
            })
            .await?;
        let expected = jws_alg(public.algorithm()).ok_or_else(|| {
            jws_err(format!(
                "key {key} is {}, not a JWS signing key",
                public.algorithm().as_str_name()
            ))
        })?;
        if alg != expected {
            return Err(jws_err(format!(
                "the header says alg {alg:?} but {kid_text} is {} ({expected})",
                public.algorithm().as_str_name()
            )));
        }
        let input = signing_input(p.header_b64, &payload);
        let resp = self
            .verify(proto::VerifyRequest {
                key: key.to_owned(),
                key_version: version,
                input: Some(match sign_input(&alg, input.into_bytes()) {
                    proto::sign_request::Input::Digest(d) => proto::verify_request::Input::Digest(d),
                    proto::sign_request::Input::Message(m) => proto::verify_request::Input::Message(m),
                }),
                signature: p.signature,
                encoding: proto::SignatureEncoding::P1363 as i32,
            })
            .await?;
        if !resp.valid {
            return Err(jws_err(format!("the signature does not verify under {kid_text}")));
        }
        Ok(VerifiedJws {
            header: p.header,
            payload,
            key: key.to_owned(),
            key_version: version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_header_is_alg_kid_typ_then_the_extras_in_order() {
        let opts = JwsOptions::default()
            .typ("JOSE")
            .header("http://openbanking.org.uk/iat", json!(1_700_000_000))
            .header("http://openbanking.org.uk/iss", json!("0015800001041RHAAY"))
            .header("http://openbanking.org.uk/tan", json!("openbanking.org.uk"))
            .header(
                "crit",
                json!([
                    "http://openbanking.org.uk/iat",
                    "http://openbanking.org.uk/iss",
                    "http://openbanking.org.uk/tan"
                ]),
            );
        check_extra(&opts).unwrap();
        let h = header_json("PS256", "ob.signing/3", &opts);
        assert_eq!(
            h,
            r#"{"alg":"PS256","kid":"ob.signing/3","typ":"JOSE","http://openbanking.org.uk/iat":1700000000,"http://openbanking.org.uk/iss":"0015800001041RHAAY","http://openbanking.org.uk/tan":"openbanking.org.uk","crit":["http://openbanking.org.uk/iat","http://openbanking.org.uk/iss","http://openbanking.org.uk/tan"]}"#
        );
        let v: Value = serde_json::from_str(&h).unwrap();
        assert_eq!(v["kid"], "ob.signing/3");
    }

    #[test]
    fn reserved_repeated_and_bad_crit_parameters_are_refused() {
        for (opts, why) in [
            (JwsOptions::default().header("alg", json!("none")), "set by the helper"),
            (JwsOptions::default().header("kid", json!("x/1")), "set by the helper"),
            (JwsOptions::default().header("b64", json!(false)), "RFC 7797"),
            (JwsOptions::default().typ("JWT").header("typ", json!("JOSE")), "twice"),
            (
                JwsOptions::default().header("a", json!(1)).header("a", json!(2)),
                "twice",
            ),
            (JwsOptions::default().header("crit", json!([])), "non-empty array"),
            (JwsOptions::default().header("crit", json!("a")), "non-empty array"),
            (
                JwsOptions::default().header("crit", json!(["missing"])),
                "not in the header",
            ),
            (
                JwsOptions::default().typ("JOSE").header("crit", json!(["typ"])),
                "RFC 7515 defines",
            ),
            (
                JwsOptions::default()
                    .header("a", json!(1))
                    .header("crit", json!(["a", "a"])),
                "twice",
            ),
            (JwsOptions::default().header("", json!(1)), "empty"),
        ] {
            let e = check_extra(&opts).unwrap_err().to_string();
            assert!(e.contains(why), "{opts:?}: {e}");
        }
        let many = (0..=MAX_EXTRA_PARAMETERS).fold(JwsOptions::default(), |o, i| o.header(format!("p{i}"), json!(i)));
        assert!(check_extra(&many).unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn kids_name_a_key_and_a_positive_version() {
        assert_eq!(parse_kid("payments.sig/12").unwrap(), ("payments.sig", 12));
        assert_eq!(kid("payments.sig", 12), "payments.sig/12");
        for bad in [
            "payments.sig",
            "payments.sig/",
            "/3",
            "k/0",
            "k/-1",
            "k/x",
            "k/4294967296",
        ] {
            assert!(parse_kid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compact_parsing_refuses_malformed_input() {
        let h = B64.encode(r#"{"alg":"ES256","kid":"k/1"}"#);
        let ok = format!("{h}.{}.{}", B64.encode(b"hi"), B64.encode([1u8; 64]));
        let p = parse_compact(&ok).unwrap();
        assert_eq!(p.header["alg"], "ES256");
        assert_eq!(p.signature, vec![1u8; 64]);
        let detached = format!("{h}..{}", B64.encode([1u8; 64]));
        assert_eq!(parse_compact(&detached).unwrap().payload_b64, "");
        for bad in [
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("{h}.x.!!"),
            format!("{}.x.AA", B64.encode("[1]")),
            format!("{}.x.AA", B64.encode("not json")),
            format!("%%.{}.AA", B64.encode(b"p")),
            format!("{}.x.AA", B64.encode(vec![b' '; MAX_HEADER_BYTES + 10])),
        ] {
            assert!(matches!(parse_compact(&bad), Err(Error::Jws(_))), "{bad}");
        }
    }

    #[test]
    fn the_signing_input_is_the_encoded_header_dot_the_encoded_payload() {
        // RFC 7515 Appendix A.1's payload, encoded as in the RFC
        let payload = b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        assert_eq!(
            signing_input("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9", payload),
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
        );
    }

    #[test]
    fn algorithms_map_to_jws_names() {
        use proto::Algorithm as A;
        assert_eq!(jws_alg(A::EcdsaP256Sha256), Some("ES256"));
        assert_eq!(jws_alg(A::RsaPss3072Sha256), Some("PS256"));
        assert_eq!(jws_alg(A::RsaPss4096Sha256), Some("PS256"));
        assert_eq!(jws_alg(A::Ed25519), Some("EdDSA"));
        assert_eq!(jws_alg(A::HmacSha256), None);
        assert_eq!(jws_alg(A::Aes256Gcm), None);
    }
}
