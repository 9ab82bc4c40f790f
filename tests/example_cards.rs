//! The example card vault (`examples/cards`, issue 14) against the real
//! daemon: cards added, found by their tokenized last four digits and read
//! back; the SQLite file holds no card number in clear; a sealed number
//! moved to another row does not open (the row id is its associated data).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::lib_client::*;
use common::*;
use kmsd_example_cards::{CardVault, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_vault_seals_per_row_and_searches_by_last_four() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let db = dir.path().join("cards.sqlite");
    let vault = CardVault::open(&db, client_for(&d).await).unwrap();
    vault.create_keys().await.unwrap();
    vault.create_keys().await.unwrap(); // idempotent
    let ada = vault.add("Ada", "4111 1111 1111 1111").await.unwrap();
    let bob = vault.add("Bob", "5555555555554444").await.unwrap();
    let cy = vault.add("Cy", "4000 0000 0006 1111").await.unwrap();
    assert!(matches!(
        vault.add("Eve", "4111 1111 1111 1112").await,
        Err(Error::NotAPan)
    ));

    let hits = vault.find_by_last4("1111").await.unwrap();
    assert_eq!(hits.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ada, cy]);
    assert_eq!(vault.find_by_last4("4444").await.unwrap()[0].customer, "Bob");
    assert!(vault.find_by_last4("9999").await.unwrap().is_empty());
    assert_eq!(vault.pan(ada).await.unwrap(), "4111111111111111");
    assert_eq!(vault.pan(bob).await.unwrap(), "5555555555554444");
    drop(vault);

    // no card number, nor its last four in clear, in the database file
    let bytes = std::fs::read(&db).unwrap();
    for needle in ["4111111111111111", "5555555555554444", "4000000000061111"] {
        assert!(!contains(&bytes, needle.as_bytes()), "{needle} in clear");
    }
    // Ada's sealed number copied into Bob's row (write access to the
    // database, no key): refused
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE cards SET pan_sealed = (SELECT pan_sealed FROM cards WHERE id = ?1) WHERE id = ?2",
            [ada, bob],
        )
        .unwrap();
    let vault = CardVault::open(&db, client_for(&d).await).unwrap();
    let e = vault.pan(bob).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Kms(kmsd::client::Error::Format(
                kmsd::client::format::FormatError::Authentication
            ))
        ),
        "{e:?}"
    );
    assert_eq!(vault.pan(ada).await.unwrap(), "4111111111111111");
}
