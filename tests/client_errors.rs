//! The client names the cause of a failed connection: which certificate,
//! why, and what to do, against the real daemon over real mTLS. Before,
//! an expired client certificate surfaced at the first call as
//! `Unknown: transport error` and a refused one as `Broken pipe`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use kmsd::client::certificate::Problem;
use kmsd::client::{ClientSettings, Error};
use rustls::AlertDescription;

/// Connects with the client's own checks (what kmsctl does).
async fn checked(s: &ClientSettings) -> Error {
    match kmsd::client::connect(s).await {
        Ok(_) => panic!("the connection must fail"),
        Err(e) => e,
    }
}

/// Connects without the client's own checks, so the daemon judges.
async fn unchecked(s: &ClientSettings) -> Error {
    let cfg = kmsd::client::tls_config(&s.ca, &s.cert, &s.key).unwrap();
    match kmsd::client::connect_with(s, cfg).await {
        Ok(_) => panic!("the connection must fail"),
        Err(e) => e,
    }
}

fn refused_with(e: &Error) -> AlertDescription {
    match e {
        Error::Refused { alert, .. } => *alert,
        other => panic!("expected a refusal by the daemon, got {other:?}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_name_the_certificate_the_reason_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let app = Some("spiffe://test.internal/app");
    pki.unusable_clients(app);
    // a URI SAN that breaks the identity rules (spells a key-hash identity)
    pki.client("spoof", Some("sha256:00"));
    // certificates from CAs the daemon does not trust: one of another
    // name, one of the same name (its signature does not verify)
    let other = tempfile::tempdir().unwrap();
    let namesake = Pki::new(other.path());
    namesake.client("namesake", app);
    let another = kmsd::dev::Ca::new("another CA").unwrap();
    namesake.write_issued("stranger", &another.issue_client("stranger", app).unwrap());
    kmsd::dev::write_file(
        &other.path().join("another-ca.pem"),
        another.cert_pem().as_bytes(),
        false,
    )
    .unwrap();
    let d = Daemon::start(dir.path());
    let cert = |who: &str| dir.path().join(format!("{who}.pem")).display().to_string();

    // expired: named locally with its date; the daemon's own verdict is
    // classified too (a client that skips the check)
    let e = checked(&d.settings("expired", None)).await;
    assert!(
        matches!(
            &e,
            Error::ClientCertificate {
                problem: Problem::Expired { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "client certificate {} expired at 2021-01-01T00:00:00Z: get a new certificate from your CA and \
             point KMSD_CERT and KMSD_KEY at it",
            cert("expired")
        )
    );
    let e = unchecked(&d.settings("expired", None)).await;
    assert_eq!(refused_with(&e), AlertDescription::CertificateExpired);
    let m = e.to_string();
    assert!(
        m.contains(&format!("refused client certificate {}", cert("expired"))),
        "{m}"
    );
    assert!(m.contains("expired or not yet valid by the daemon's clock"), "{m}");

    // not yet valid
    let e = checked(&d.settings("future", None)).await;
    assert!(
        e.to_string().contains("is not valid before 2090-01-01T00:00:00Z"),
        "{e}"
    );
    assert_eq!(
        refused_with(&unchecked(&d.settings("future", None)).await),
        AlertDescription::CertificateExpired
    );

    // not for client use
    let e = checked(&d.settings("server-auth", None)).await;
    assert!(
        matches!(
            &e,
            Error::ClientCertificate {
                problem: Problem::NotForClientUse,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("is not for client use"), "{e}");
    let e = unchecked(&d.settings("server-auth", None)).await;
    assert_eq!(refused_with(&e), AlertDescription::UnsupportedCertificate);
    assert!(e.to_string().contains("not for client use"), "{e}");

    // unknown CA: the local checks pass, the daemon refuses
    let mut s = d.settings("client", None);
    s.cert = other.path().join("stranger.pem");
    s.key = other.path().join("stranger.key");
    let e = checked(&s).await;
    assert_eq!(refused_with(&e), AlertDescription::UnknownCA);
    assert!(
        e.to_string().contains("it is not issued by a CA the daemon trusts"),
        "{e}"
    );
    s.cert = other.path().join("namesake.pem");
    s.key = other.path().join("namesake.key");
    let e = checked(&s).await;
    assert_eq!(refused_with(&e), AlertDescription::DecryptError);
    assert!(
        e.to_string().contains("does not verify against the daemon's client CA"),
        "{e}"
    );

    // identity rules
    let e = checked(&d.settings("spoof", None)).await;
    assert_eq!(refused_with(&e), AlertDescription::CertificateUnknown);
    assert!(e.to_string().contains("identity rules"), "{e}");

    // the server's certificate: wrong name, untrusted CA
    let mut s = d.settings("client", None);
    s.server_name = Some("kmsd.elsewhere.example".into());
    let e = checked(&s).await;
    assert!(matches!(&e, Error::ServerCertificate { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("is not valid for the name \"kmsd.elsewhere.example\": connect by a name"),
        "{e}"
    );
    let mut s = d.settings("client", None);
    s.ca = other.path().join("another-ca.pem");
    let e = checked(&s).await;
    assert!(
        e.to_string().contains(&format!(
            "is not issued by the CA in {}: set KMSD_CA",
            other.path().join("another-ca.pem").display()
        )),
        "{e}"
    );
    s.ca = other.path().join("ca.pem");
    let e = checked(&s).await;
    assert!(
        e.to_string().contains("(issued by another CA of the same name?)"),
        "{e}"
    );

    // a key that is not the certificate's
    let mut s = d.settings("client", None);
    s.key = dir.path().join("expired.key");
    assert!(matches!(checked(&s).await, Error::KeyMismatch { .. }));

    // nothing listening
    let e = checked(&d.settings("client", Some("unix:/nonexistent/kmsd.sock"))).await;
    assert!(matches!(&e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("is kmsd running?"), "{e}");

    // and a good client is served; a failed call prints its status name
    let mut keys = kmsd::proto::keys_client::KeysClient::new(d.channel().await);
    let status = keys
        .get_key(kmsd::proto::GetKeyRequest { name: "missing".into() })
        .await
        .unwrap_err();
    assert!(Error::from(status).to_string().starts_with("NOT_FOUND: "));
}
