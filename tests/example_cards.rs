//! The example card vault (`examples/cards`, issue 14) against the real
//! daemon: cards added, found by their tokenized last four digits and by
//! their whole number through a blind index (issue 17; also across a
//! rotation of the index key and after a re-index), and read back; the SQLite file holds no card number in clear; a sealed number
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

    // search by the whole number: its blind index, any spacing
    let ids = |v: Vec<kmsd_example_cards::CardRef>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(ids(vault.find_by_pan("4111-1111-1111-1111").await.unwrap()), vec![ada]);
    assert_eq!(ids(vault.find_by_pan("4000000000061111").await.unwrap()), vec![cy]);
    assert!(vault.find_by_pan("4012 8888 8888 1881").await.unwrap().is_empty());
    assert!(matches!(vault.find_by_pan("4111").await, Err(Error::NotAPan)));
    // a second card with Ada's number: both found
    let ada2 = vault.add("Ada (second card)", "4111111111111111").await.unwrap();
    assert_eq!(
        ids(vault.find_by_pan("4111111111111111").await.unwrap()),
        vec![ada, ada2]
    );
    // the index key rotates: old rows keep version 1, new rows get 2, and a
    // lookup finds both; a re-index moves every row to version 2
    let c = client_for(&d).await;
    c.rotate_key(kmsd::proto::RotateKeyRequest {
        name: kmsd_example_cards::PAN_INDEX_KEY.into(),
    })
    .await
    .unwrap();
    let ada3 = vault.add("Ada (third card)", "4111 1111 1111 1111").await.unwrap();
    assert_eq!(
        ids(vault.find_by_pan("4111111111111111").await.unwrap()),
        vec![ada, ada2, ada3]
    );
    let versions = |db: &std::path::Path| -> Vec<u32> {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut st = conn.prepare("SELECT pan_index_version FROM cards ORDER BY id").unwrap();
        let v = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<u32>, _>>()
            .unwrap();
        v
    };
    assert_eq!(versions(&db), vec![1, 1, 1, 1, 2]);
    assert_eq!(vault.reindex().await.unwrap(), 5);
    assert_eq!(versions(&db), vec![2; 5]);
    assert_eq!(
        ids(vault.find_by_pan("4111111111111111").await.unwrap()),
        vec![ada, ada2, ada3]
    );
    assert_eq!(ids(vault.find_by_pan("5555 5555 5555 4444").await.unwrap()), vec![bob]);
    // a forged index (a row made to look like Ada's card) is dropped by
    // the final comparison of the decrypted numbers
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE cards SET pan_index = (SELECT pan_index FROM cards WHERE id = ?1) WHERE id = ?2",
            [ada, bob],
        )
        .unwrap();
    assert_eq!(
        ids(vault.find_by_pan("4111111111111111").await.unwrap()),
        vec![ada, ada2, ada3]
    );
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
