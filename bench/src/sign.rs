//! `kmsd-bench sign`: signatures and MACs (issue 17) against same-run
//! baselines.
//!
//! 1. `Sign` and `Verify` op/s through gRPC (mTLS, one release daemon,
//!    audit trail on) for ES256, PS256-3072 and Ed25519 keys, a 32-byte
//!    message hashed by kmsd, against `openssl speed ecdsap256 rsa3072
//!    ed25519` run in the same invocation (`-multi` with one process per
//!    core when the callers are more than one, single-process otherwise),
//!    and against the keystore's own primitive called in-process on one
//!    thread (the crypto floor: what is left is gRPC, TLS, policy, audit).
//! 2. `Mac` (HMAC-SHA256) against `Encrypt` (AES-256-GCM), both at 64 B,
//!    same daemon, same concurrency, with their in-process floors.
use super::*;
use crate::client_lib::{median, rate};
use kmsd::client::{Client, ClientBuilder};
use kmsd_keystore::sign::{SigEncoding, SignInput, SigningKey};
use kmsd_keystore::{Algorithm as KsAlg, Material};
use proto::{sign_request, verify_request, Algorithm};

/// The signing algorithms measured: proto algorithm, keystore algorithm,
/// label, and the row of `openssl speed`'s table that matches it.
const SIGNING: [(Algorithm, KsAlg, &str, &str); 3] = [
    (
        Algorithm::EcdsaP256Sha256,
        KsAlg::EcdsaP256Sha256,
        "ES256 (ECDSA P-256)",
        "ecdsa (nistp256)",
    ),
    (
        Algorithm::RsaPss3072Sha256,
        KsAlg::RsaPss3072Sha256,
        "PS256 (RSA-PSS 3072)",
        "rsa 3072 bits",
    ),
    (Algorithm::Ed25519, KsAlg::Ed25519, "EdDSA (Ed25519)", "EdDSA (Ed25519)"),
];

/// Bytes signed (kmsd hashes them) and MACed/encrypted.
const SIGN_BYTES: usize = 32;
const MAC_BYTES: usize = 64;

fn key_name(a: Algorithm) -> String {
    format!("bench.{}", a.as_str_name().to_ascii_lowercase())
}

/// (sign/s, verify/s) per `openssl speed` row label.
pub(crate) type OpensslTable = Vec<(String, f64, f64)>;

/// Runs `openssl speed -seconds <secs> ecdsap256 rsa3072 ed25519`, with
/// `-multi <procs>` when `procs > 1`, and parses its sign/s and verify/s
/// table (the last two numbers of each row).
pub(crate) fn openssl_sign_table(secs: u64, procs: usize) -> Result<OpensslTable, BoxError> {
    let mut cmd = Command::new("openssl");
    cmd.arg("speed").args(["-seconds", &secs.max(1).to_string()]);
    if procs > 1 {
        cmd.args(["-multi", &procs.to_string()]);
    }
    let out = cmd
        .args(["ecdsap256", "rsa3072", "ed25519"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("openssl speed: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl speed exited with {}", out.status).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let table = parse_openssl_sign(&text);
    if table.len() < SIGNING.len() {
        return Err(format!(
            "openssl speed: found {} of {} rows in its table",
            table.len(),
            SIGNING.len()
        )
        .into());
    }
    Ok(table)
}

/// The rows of `openssl speed`'s signature table: a label, two times, then
/// sign/s and verify/s. Other lines (headers, `-multi`'s `+R` lines) are
/// skipped.
fn parse_openssl_sign(text: &str) -> OpensslTable {
    let mut rows = Vec::new();
    for line in text.lines() {
        let Some((_, _, label, _)) = SIGNING.iter().find(|(_, _, _, l)| line.contains(l)) else {
            continue;
        };
        if line.starts_with('+') {
            continue;
        }
        let nums: Vec<f64> = line
            .split_whitespace()
            .rev()
            .take(2)
            .filter_map(|w| w.parse::<f64>().ok())
            .collect();
        if let [verify, sign] = nums[..] {
            rows.push((label.to_string(), sign, verify));
        }
    }
    rows
}

fn openssl_row<'a>(table: &'a OpensslTable, label: &str) -> Option<&'a (String, f64, f64)> {
    table.iter().find(|(l, _, _)| l == label)
}

/// Calls of `f` per second on this thread for `duration` (the in-process floor).
fn floor<F: FnMut() -> Result<(), kmsd_keystore::Error>>(duration: Duration, mut f: F) -> Result<f64, BoxError> {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        f()?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// In-process (sign/s, verify/s) of the keystore's `SigningKey` on one thread.
fn sign_floor(alg: KsAlg, duration: Duration) -> Result<(f64, f64), BoxError> {
    let key = SigningKey::parse(alg, &Material::generate(alg)?)?;
    let msg = [0x42u8; SIGN_BYTES];
    let s = floor(duration, || {
        key.sign(SignInput::Message(&msg), SigEncoding::Der).map(|s| {
            std::hint::black_box(s);
        })
    })?;
    let sig = key.sign(SignInput::Message(&msg), SigEncoding::Der)?;
    let v = floor(duration, || {
        key.public_key()
            .verify(SignInput::Message(&msg), &sig, SigEncoding::Der)
            .map(|ok| {
                std::hint::black_box(ok);
            })
    })?;
    Ok((s, v))
}

fn verify_req(key: String, msg: &[u8], sig: &[u8]) -> proto::VerifyRequest {
    proto::VerifyRequest {
        key,
        input: Some(verify_request::Input::Message(msg.to_vec())),
        signature: sig.to_vec(),
        ..Default::default()
    }
}

async fn connect(dir: &Path) -> Result<Client, BoxError> {
    Ok(ClientBuilder::new()
        .endpoint(format!("unix:{}", dir.join("kmsd.sock").display()))
        .ca(dir.join("ca.pem"))
        .cert(dir.join("client.pem"))
        .key(dir.join("client.key"))
        .server_name("localhost")
        .connect()
        .await?)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "–".into()
    }
}

pub(crate) async fn sign_bench(
    duration: Duration,
    repeat: usize,
    conc: &[usize],
    no_openssl: bool,
) -> Result<(), BoxError> {
    let repeat = repeat.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir()?;
    pki(dir.path())?;
    let tcp = format!("127.0.0.1:{}", free_port()?);
    let (_kmsd, _) = start_kmsd(dir.path(), "kmsd", &tcp).await?;
    let client = connect(dir.path()).await?;
    for a in [
        Algorithm::EcdsaP256Sha256,
        Algorithm::RsaPss3072Sha256,
        Algorithm::Ed25519,
        Algorithm::HmacSha256,
        Algorithm::Aes256Gcm,
    ] {
        client
            .create_key(proto::CreateKeyRequest {
                name: key_name(a),
                algorithm: a as i32,
                ..Default::default()
            })
            .await?;
    }
    let msg = Arc::new(vec![0x42u8; SIGN_BYTES]);
    let mut sigs = Vec::new();
    for (a, ..) in SIGNING {
        let s = client
            .sign(proto::SignRequest {
                key: key_name(a),
                input: Some(sign_request::Input::Message(msg.to_vec())),
                ..Default::default()
            })
            .await?;
        let sig = Arc::new(s.signature);
        // checked once here; the timed calls verify the same valid signature
        if !client.verify(verify_req(key_name(a), &msg, &sig)).await?.valid {
            return Err(format!("{}: kmsd's own signature did not verify", key_name(a)).into());
        }
        sigs.push(sig);
    }

    // the in-process floors, one thread each, measured once
    let mut floors = Vec::new();
    for (_, ks, ..) in SIGNING {
        floors.push(sign_floor(ks, duration)?);
    }
    let mac_material = Material::generate(KsAlg::HmacSha256)?;
    let data = [0x42u8; MAC_BYTES];
    let mac_floor = floor(duration, || {
        kmsd_keystore::sign::mac(KsAlg::HmacSha256, &mac_material, &data).map(|m| {
            std::hint::black_box(m);
        })
    })?;
    let enc_floor = crypto_floor(MAC_BYTES, duration);

    let secs = duration.as_secs().max(1);
    println!(
        "# kmsd-bench sign: {} s per case, median of {repeat}, {cores} cores; openssl speed -seconds {secs} \
         (-multi {cores} when callers > 1, single-process at 1 caller); floors: the keystore primitive in-process, one thread",
        duration.as_secs_f64()
    );
    for &c in conc {
        let procs = if c > 1 { cores.min(c) } else { 1 };
        let openssl = if no_openssl {
            None
        } else {
            match openssl_sign_table(secs, procs) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("kmsd-bench: {e}; the openssl columns are left empty");
                    None
                }
            }
        };
        let how = if procs > 1 {
            format!("openssl -multi {procs}")
        } else {
            "openssl single-process".into()
        };
        println!("\n## concurrency {c} ({how})");
        println!("| algorithm | op | kmsd op/s | openssl op/s | kmsd/openssl | in-process op/s (1 thread) | kmsd/in-process |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        for (i, (a, _, label, _)) in SIGNING.iter().enumerate() {
            let (mut s_runs, mut v_runs) = (Vec::new(), Vec::new());
            let sig = sigs.get(i).cloned().unwrap_or_default();
            for _ in 0..repeat {
                let (cl, m, key) = (client.clone(), msg.clone(), key_name(*a));
                s_runs.push(
                    rate(c, duration, move || {
                        let (cl, m, key) = (cl.clone(), m.clone(), key.clone());
                        async move {
                            cl.sign(proto::SignRequest {
                                key,
                                input: Some(sign_request::Input::Message(m.to_vec())),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                        }
                    })
                    .await?,
                );
                let (cl, m, key, sig) = (client.clone(), msg.clone(), key_name(*a), sig.clone());
                v_runs.push(
                    rate(c, duration, move || {
                        let (cl, m, key, sig) = (cl.clone(), m.clone(), key.clone(), sig.clone());
                        async move { cl.verify(verify_req(key, &m, &sig)).await.map(|_| ()) }
                    })
                    .await?,
                );
            }
            let (s, v) = (median(s_runs), median(v_runs));
            let row = openssl.as_ref().and_then(|t| openssl_row(t, label));
            let (fs, fv) = floors.get(i).copied().unwrap_or_default();
            for (op, k, o, f) in [("sign", s, row.map(|r| r.1), fs), ("verify", v, row.map(|r| r.2), fv)] {
                let (o_txt, r_txt) = match o {
                    Some(o) => (format!("{o:.0}"), ratio(k, o)),
                    None => ("–".into(), "–".into()),
                };
                println!(
                    "| {label} | {op} | {k:.0} | {o_txt} | {r_txt} | {f:.0} | {} |",
                    ratio(k, f)
                );
            }
        }
        let (mut m_runs, mut e_runs) = (Vec::new(), Vec::new());
        let data = Arc::new(vec![0x42u8; MAC_BYTES]);
        for _ in 0..repeat {
            let (cl, d) = (client.clone(), data.clone());
            m_runs.push(
                rate(c, duration, move || {
                    let (cl, d) = (cl.clone(), d.clone());
                    async move {
                        cl.mac(proto::MacRequest {
                            key: key_name(Algorithm::HmacSha256),
                            data: d.to_vec(),
                            key_version: 0,
                        })
                        .await
                        .map(|_| ())
                    }
                })
                .await?,
            );
            let (cl, d) = (client.clone(), data.clone());
            e_runs.push(
                rate(c, duration, move || {
                    let (cl, d) = (cl.clone(), d.clone());
                    async move {
                        cl.encrypt(proto::EncryptRequest {
                            key: key_name(Algorithm::Aes256Gcm),
                            plaintext: d.to_vec(),
                            associated_data: Vec::new(),
                        })
                        .await
                        .map(|_| ())
                    }
                })
                .await?,
            );
        }
        let (m, e) = (median(m_runs), median(e_runs));
        println!("\n| {MAC_BYTES} B, concurrency {c} | kmsd op/s | in-process op/s (1 thread) | kmsd/in-process |");
        println!("|---|---:|---:|---:|");
        println!(
            "| Mac (HMAC-SHA256) | {m:.0} | {mac_floor:.0} | {} |",
            ratio(m, mac_floor)
        );
        println!(
            "| Encrypt (AES-256-GCM) | {e:.0} | {enc_floor:.0} | {} |",
            ratio(e, enc_floor)
        );
        println!(
            "| **Mac / Encrypt** | **{}** | {} | |",
            ratio(m, e),
            ratio(mac_floor, enc_floor)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssl_speed_table() {
        let text = "Doing 3072 bits private rsa's for 1s: 683 3072 bits private RSA's in 1.00s\n\
                    version: 3.0.19\n\
                    +R1:683:3072:1.00\n\
                    \x20                 sign    verify    sign/s verify/s\n\
                    rsa 3072 bits 0.001463s 0.000030s    683.3  33862.8\n\
                    \x20                             sign    verify    sign/s verify/s\n\
                    \x20256 bits ecdsa (nistp256)   0.0000s   0.0000s  62904.1  21770.6\n\
                    \x20                             sign    verify    sign/s verify/s\n\
                    \x20253 bits EdDSA (Ed25519)   0.0000s   0.0001s  38382.2  14442.9\n";
        let t = parse_openssl_sign(text);
        assert_eq!(t.len(), 3);
        let rsa = openssl_row(&t, "PS256 (RSA-PSS 3072)").expect("rsa row");
        assert_eq!((rsa.1, rsa.2), (683.3, 33862.8));
        let ec = openssl_row(&t, "ES256 (ECDSA P-256)").expect("ecdsa row");
        assert_eq!((ec.1, ec.2), (62904.1, 21770.6));
        let ed = openssl_row(&t, "EdDSA (Ed25519)").expect("ed25519 row");
        assert_eq!((ed.1, ed.2), (38382.2, 14442.9));
    }
}
