//! Helpers for the tests of the client library (`kmsd-client`'s typed
//! client, envelopes and streams): a builder for a daemon's `client`
//! certificate, and the daemon's per-method call counters.
use super::{scrape, Daemon};
use kmsd::client::{Client, ClientBuilder};
use kmsd::proto;
use std::path::Path;

/// A client builder for the `client` certificate of the PKI in `dir`,
/// over `addrs` in order.
pub fn builder(dir: &Path, addrs: &[String]) -> ClientBuilder {
    let mut b = ClientBuilder::new()
        .ca(dir.join("ca.pem"))
        .cert(dir.join("client.pem"))
        .key(dir.join("client.key"));
    for a in addrs {
        b = b.endpoint(a.clone());
    }
    b
}

/// The daemon's Unix socket as an address.
pub fn unix(d: &Daemon) -> String {
    format!("unix:{}", d.socket.display())
}

/// A connected client of `d` over its Unix socket.
pub async fn client_for(d: &Daemon) -> Client {
    builder(&d.dir, &[unix(d)]).connect().await.unwrap()
}

/// Creates key `name` (default policy).
pub async fn create_key(c: &Client, name: &str) {
    c.create_key(proto::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// `kmsd_requests_total{method="OP",code="OK"}` from the metrics endpoint
/// on Unix socket `metrics`.
pub fn ok_calls(metrics: &Path, op: &str) -> u64 {
    let text = scrape(metrics);
    let prefix = format!("kmsd_requests_total{{method=\"{op}\",code=\"OK\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}
