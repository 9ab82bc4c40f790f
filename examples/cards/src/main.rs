//! `cards`: the example card vault against a running kmsd (README.md).
//!
//! ```sh
//! cards demo                  # adds three cards, searches, reads one back
//! cards add "Ada Lovelace" 4111111111111111
//! cards show 1
//! cards find 1111
//! cards find-pan "4111 1111 1111 1111"
//! ```
//! Connection: the `KMSD_*` environment (as kmsctl), or `--dev-dir DIR`
//! for the files `kmsd dev` wrote. Database: `--db` (default `cards.sqlite`).
#![forbid(unsafe_code)]
use kmsd_client::ClientBuilder;
use kmsd_example_cards::{CardVault, Error};
use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cards [--db FILE] [--dev-dir DIR] (demo | add CUSTOMER PAN | show ID | find LAST4 | find-pan PAN)"
    );
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.remove(i);
        (i < args.len()).then(|| args.remove(i))
    };
    let db = PathBuf::from(take("--db").unwrap_or_else(|| "cards.sqlite".into()));
    let dev = take("--dev-dir").map(PathBuf::from);
    let builder = match dev {
        Some(d) => Ok(ClientBuilder::new()
            .endpoint(format!("unix:{}", d.join("kmsd.sock").display()))
            .ca(d.join("ca.pem"))
            .cert(d.join("client.pem"))
            .key(d.join("client.key"))),
        None => ClientBuilder::from_env(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cards: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        let client = builder?.connect().await?;
        let vault = CardVault::open(&db, client)?;
        vault.create_keys().await?;
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["demo"] => {
                for (who, pan) in [
                    ("Ada Lovelace", "4111 1111 1111 1111"),
                    ("Charles Babbage", "5555 5555 5555 4444"),
                    ("Grace Hopper", "4012 8888 8888 1881"),
                ] {
                    let id = vault.add(who, pan).await?;
                    println!("added card {id} for {who}");
                }
                for card in vault.find_by_last4("1111").await? {
                    println!("ends in 1111: card {} of {}", card.id, card.customer);
                    println!("  number: {}", vault.pan(card.id).await?);
                }
                for card in vault.find_by_pan("4012-8888-8888-1881").await? {
                    println!(
                        "number 4012 8888 8888 1881 (blind index): card {} of {}",
                        card.id, card.customer
                    );
                }
                println!("database: {} (numbers sealed per row; grep finds none)", db.display());
            }
            ["add", who, pan] => println!("{}", vault.add(who, pan).await?),
            ["show", id] => {
                let id = id.parse().map_err(|_| Error::NoSuchCard(-1))?;
                println!("{}", vault.pan(id).await?);
            }
            ["find", last4] => {
                for c in vault.find_by_last4(last4).await? {
                    println!("{}\t{}", c.id, c.customer);
                }
            }
            ["find-pan", pan] => {
                for c in vault.find_by_pan(pan).await? {
                    println!("{}\t{}", c.id, c.customer);
                }
            }
            _ => return Ok::<bool, Error>(false),
        }
        Ok(true)
    };
    match rt.block_on(run) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => usage(),
        Err(e) => {
            eprintln!("cards: {e}");
            ExitCode::FAILURE
        }
    }
}
