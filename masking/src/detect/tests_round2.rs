//! Issue 16 shapes: payment messages, credentials in other clothes, KYC
//! data, each in several variants, and the decoys that must survive.

use super::*;

fn r(s: &str) -> String {
    redact(s, &RedactOptions::default()).text
}

/// Every `secret` is gone from `r(line)` (compared without separators),
/// and the redaction is idempotent.
fn gone(line: &str, secrets: &[&str]) {
    let out = r(line);
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '/' | '(' | ')'))
            .collect::<String>()
            .to_uppercase()
    };
    for s in secrets {
        assert!(!norm(&out).contains(&norm(s)), "{s:?} survived in {out:?}");
    }
    assert_eq!(r(&out), out, "not idempotent: {out:?}");
}

fn kept(line: &str) {
    assert_eq!(r(line), line, "a decoy was redacted");
}

#[test]
fn track_two_equivalent_data_is_masked_whole() {
    for (line, secret) in [
        (
            "ISO8583 DE35=4111111111111111=25121011234567890 approved",
            "4111111111111111=2512101",
        ),
        ("track2: 4111111111111111D25121011234567890", "25121011234567890"),
        (";5500000000000004=2512101000000000000?", "5500000000000004"),
        ("field35=5555555555554444=2812", "2812"),
        ("{\"de35\":\"378282246310005D2703201\"}", "2703201"),
        ("tk2 6011111111111117==1011234", "1011234"),
    ] {
        gone(line, &[secret]);
        assert!(redact(line, &RedactOptions::default())
            .findings
            .iter()
            .any(|f| f.kind == Kind::TrackData));
    }
    assert_eq!(r("DE35=4111111111111111=2512101 ok"), "DE35=[REDACTED] ok");
    // track 1, with its name field
    gone(
        "%B4111111111111111^DOE/JOHN^2512101000000000000?",
        &["DOE/JOHN", "4111111111111111"],
    );
    // decoys: a Luhn-failing number before `=`, an amount, a key=value pair
    kept("batch 4111111111111112=2512101 ok");
    kept("ratio 12=12 and x=4111");
}

#[test]
fn swift_account_lines() {
    assert_eq!(r(":59:/31926819"), ":59:/****6819");
    assert_eq!(r(":50K:/GB29NWBK60161331926819"), ":50K:/GB****************6819");
    assert_eq!(r(":59F:/12345678\\n1/JOHN SMITH"), ":59F:/****5678\\n1/JOHN SMITH");
    gone(
        ":50A:/DE89370400440532013000 :57A:/BARCGB22",
        &["DE89370400440532013000"],
    );
    gone(
        "{4:\r\n:20:REF123\r\n:50K:/0012345678\r\nJOHN SMITH\r\n:59:/40051512345678\r\n-}",
        &["0012345678", "40051512345678"],
    );
    // decoys: other tags, times, a tag with no account
    kept(":20:REF20261201001 :32A:261201GBP1000,00 :70:/INV/12");
    kept("at 12:59:/tmp ok");
}

#[test]
fn card_numbers_grouped_by_dots() {
    assert_eq!(r("card 4111.1111.1111.1111 ok"), "card ****.****.****.1111 ok");
    assert_eq!(r("pan=5555.5555.5555.4444;"), "pan=****.****.****.4444;");
    gone("amex 3782.822463.10005", &["378282246310005"]);
    // decoys: IPs, versions, decimals, a Luhn-failing dotted number
    kept("ip 192.168.1.10 v1.2.3.4 amount 1234.56 ref 4111.1111.1111.1112");
}

#[test]
fn connection_string_passwords() {
    for (line, pw) in [
        (
            "postgres://app:S3cr3tPassw0rd@db.internal:5432/ledger",
            "S3cr3tPassw0rd",
        ),
        ("mysql://root:hunter2xx@10.0.0.5:3306/db", "hunter2xx"),
        ("amqp://guest:Gu3st!pw@mq", "Gu3st!pw"),
        ("redis://:s3cretRedis@cache:6379", "s3cretRedis"),
        ("mongodb+srv://svc:Zx9%40pp@cluster0.example.net/db", "Zx9%40pp"),
    ] {
        gone(line, &[pw]);
        let out = r(line);
        assert!(out.contains("@"), "host lost: {out}");
    }
    assert_eq!(
        r("DATABASE_URL=postgres://app:S3cr3t@db:5432/x"),
        "DATABASE_URL=postgres://app:[REDACTED]@db:5432/x"
    );
    kept("see https://example.com:8443/path and user@example");
}

#[test]
fn basic_credentials() {
    assert_eq!(
        r("Authorization: Basic dXNlcjpwYXNzd29yZA=="),
        "Authorization: Basic [REDACTED]"
    );
    assert_eq!(
        r("curl -H 'authorization: basic YWRtaW46czNjcjN0' x"),
        "curl -H 'authorization: basic [REDACTED]' x"
    );
    assert_eq!(
        r("proxy sent Basic dXNlcjpwYXNzd29yZA== upstream"),
        "proxy sent Basic [REDACTED] upstream"
    );
    assert_eq!(r("Bearer abcdefghijklmnop123"), "Bearer [REDACTED]");
    // no colon when decoded, or prose: kept
    kept("this is basic stuff");
    kept("Basic aGVsbG8gd29ybGQ= decoded to no pair");
}

#[test]
fn service_account_private_keys() {
    let raw = "{\"type\":\"service_account\",\"private_key_id\":\"abc\",\"private_key\":\"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n\",\"client_email\":\"svc@p.iam.gserviceaccount.com\"}";
    gone(raw, &["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"]);
    assert!(r(raw).contains("\"type\":\"service_account\""));
    let escaped = "payload={\\\"private_key\\\":\\\"-----BEGIN PRIVATE KEY-----\\\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\\\n-----END PRIVATE KEY-----\\\\n\\\"}";
    gone(escaped, &["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"]);
    let truncated = "{\"private_key\": \"-----BEGIN RSA PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC...";
    gone(truncated, &["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"]);
}

#[test]
fn webhook_urls() {
    for (line, secret) in [
        (
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "XXXXXXXXXXXXXXXXXXXXXXXX",
        ),
        (
            "https://discord.com/api/webhooks/123456789012345678/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
            "AbCdEfGhIjKlMnOp",
        ),
        (
            "POST https://example.com/webhook/9f8e7d6c5b4a39281706f5e4d3c2b1a0ZZ ok",
            "9f8e7d6c5b4a39281706f5e4d3c2b1a0ZZ",
        ),
        (
            "https://outlook.webhook.office.com/webhookb2/abc-123@def/IncomingWebhook/0123456789abcdef/xyz",
            "0123456789abcdef",
        ),
        ("https://hooks.zapier.com/hooks/catch/123456/abcdef1/", "abcdef1"),
    ] {
        gone(line, &[secret]);
    }
    assert_eq!(
        r("GET https://ci.example.com/webhooks/a1b2c3d4e5f6a7b8c9d0?x=1"),
        "GET https://ci.example.com/webhooks/[REDACTED]?x=1"
    );
    kept("GET /api/webhooks/settings 200 and /webhook/ping");
}

#[test]
fn national_insurance_numbers() {
    for line in [
        "nino=AB123456C",
        "NI: AB 12 34 56 C ok",
        "ni number ab 123456 c",
        "{\"nationalInsuranceNumber\":\"JG103759A\"}",
        "customer JG103759A verified",
        "ni=zx123456d;",
    ] {
        let out = r(line);
        assert!(
            redact(line, &RedactOptions::default())
                .findings
                .iter()
                .any(|f| f.kind == Kind::NationalId),
            "{line} -> {out}"
        );
        assert!(!out.chars().any(|c| c.is_ascii_digit()), "{out}");
    }
    assert_eq!(r("NI AB 12 34 56 C"), "NI ** ** ** ** *");
    // decoys: excluded prefixes and letters, a bad suffix, inside a word
    kept("refs QQ123456C DA123456A AO123456A BG123456A GB123456A NT123456A ZZ123456A AB123456E XAB123456C");
    kept("hash ab123456cd and AB1234567C");
}

#[test]
fn dates_of_birth() {
    for (line, secret) in [
        ("{\"dob\":\"1985-04-12\"}", "19850412"),
        ("{\"dateOfBirth\":\"12/04/1985\"}", "12041985"),
        ("{\"date_of_birth\":\"April 12, 1985\"}", "April 12, 1985"),
        ("birthDate=1985-04-12T00:00:00Z", "19850412"),
        ("customer_dob: 12.04.1985", "12041985"),
        ("dob=12 April 1985 ok", "12 April 1985"),
        ("born 12/04/1985 in Leeds", "12041985"),
        ("Date of birth: 29/02/2000", "29022000"),
        ("DOB 19850412", "19850412"),
    ] {
        gone(line, &[secret]);
    }
    assert_eq!(r("{\"dob\":\"1985-04-12\"}"), "{\"dob\":\"****-**-**\"}");
    // an impossible date under a birth key is left alone (validator first);
    // dates without a birth word are not dates of birth
    kept("{\"dob\":\"1985-02-30\"} created 1985-04-12 on 12/04/1985");
}

#[test]
fn names_and_addresses_under_personal_keys() {
    let line = "{\"firstName\":\"Lucy\",\"lastName\":\"Johnson\",\"last_name\":\"Smith\",\"familyName\":\"Brown\",\
                \"surname\":\"Jones\",\"givenName\":\"Ann\",\"fullName\":\"Ann Jones\",\"addressLine1\":\"12 High Street\",\
                \"address_line_1\":\"Flat 3, 4 Mill Lane\",\"street\":\"Mill Lane\",\"postcode\":\"SW1A 1AA\",\
                \"postCode\":\"EC1A1BB\",\"zip\":\"90210\",\"city\":\"Leeds\"}";
    gone(
        line,
        &[
            "Lucy",
            "Johnson",
            "Smith",
            "Brown",
            "Jones",
            "Ann",
            "12 High Street",
            "Mill Lane",
            "1AA",
            "1BB",
            "90210",
        ],
    );
    let out = r(line);
    assert!(out.contains("\"postcode\":\"SW1A ***\""), "{out}");
    assert!(out.contains("\"city\":\"Leeds\""), "{out}");
    gone(
        "address=12 High Street, Leeds LS1 4AB city=Leeds",
        &["12 High Street", "LS1 4AB"],
    );
    assert!(r("address=12 High Street, Leeds LS1 4AB city=Leeds").ends_with(" city=Leeds"));
    gone("postcode=SW1A 1AA ok", &["SW1A1AA"]);
    // `address` also names IP, e-mail and wallet addresses: those stay
    kept("{\"address\":\"10.0.0.1\",\"remote_address\":\"10.0.0.2:443\",\"address\":\"0xabc123\"}");
    // an invalid postcode under the key is not one
    kept("postcode=NOTAPC zip=1234");
}

#[test]
fn harder_decoys_survive() {
    for line in [
        "payment settled on 12-03-24 for £12.30",
        "settled on 12-03-24 44234785 due 01-04-24",
        "commit 3f2c9a1e0b7d4c3a5f2c9a1e0b7d4c3a5f2c9a1e merged",
        "peer fe80::1ff:fe23:4567:890a and 2001:db8:85a3::8a2e:370:7334 and ::1",
        "isbn 978-0-306-40615-7 and ISBN 0-306-40615-2",
        "ean 4006381333931 barcode=5901234123457",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "batch 4111 1111 1111 1112 lot 4111111111111112",
    ] {
        kept(line);
    }
}

#[test]
fn findings_name_the_rule_that_fired() {
    let text = "nino=AB123456C card 4111.1111.1111.1111 DE35=4111111111111111=2512101";
    let red = redact(text, &RedactOptions::default());
    let rules: Vec<Rule> = red.findings.iter().map(|f| f.rule).collect();
    assert!(rules.contains(&Rule::Builtin("key:national-id")), "{rules:?}");
    assert!(rules.contains(&Rule::Builtin("card-dotted")), "{rules:?}");
    assert!(rules.contains(&Rule::Builtin("track2")), "{rules:?}");
}
