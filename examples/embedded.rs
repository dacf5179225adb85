//! DodoDB as a library, no HTTP: open a database in a directory, write,
//! read, list, subscribe to changes, and reopen it to see the data
//! recovered from the write-ahead log and the final snapshot.
//!
//! Run it with `cargo run --example embedded` (it works in a temporary
//! directory and removes it at the end).

use std::sync::mpsc;
use std::time::Duration;

use dododb::{Config, Db, Precondition, PutOptions, Target};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("dododb-embedded-{}", std::process::id()));
    let db = Db::open(Config::with_dir(&dir))?;

    // Every change of a key under "user:" reaches this closure, in order.
    let (tx, rx) = mpsc::channel();
    let subscription = db.subscribe(Target::Prefix("user:".into()), move |event| {
        let _ = tx.send(format!(
            "{} {} v{}",
            event.kind.as_str(),
            event.key,
            event.version
        ));
    });

    let first = db.put("user:1", br#"{"name": "Ada"}"#, PutOptions::default())?;
    db.put("user:2", br#"{"name": "Grace"}"#, PutOptions::default())?;
    // Replace user:1 only if nobody changed it since our write.
    let guarded = PutOptions {
        precondition: Some(Precondition::IfVersion(first.version)),
        ..PutOptions::default()
    };
    db.put("user:1", br#"{"name": "Ada Lovelace"}"#, guarded)?;
    // A session that expires on its own.
    let ttl = PutOptions {
        ttl: Some(Duration::from_secs(60)),
        ..PutOptions::default()
    };
    db.put("session:42", br#"{"user": 1}"#, ttl)?;

    for _ in 0..3 {
        println!("event: {}", rx.recv_timeout(Duration::from_secs(10))?);
    }
    drop(subscription);

    let page = db.list("user:", None, 100);
    println!("keys under user: {:?}", page.keys);
    println!("{} keys in all", db.count(None));
    db.close()?;
    // The directory's lock goes with the last handle.
    drop(db);

    // Everything acknowledged is there after a reopen.
    let db = Db::open(Config::with_dir(&dir))?;
    if let Some(entry) = db.get("user:1")? {
        println!(
            "after reopen: user:1 = {} (version {})",
            String::from_utf8_lossy(&entry.value),
            entry.version
        );
    }
    db.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
