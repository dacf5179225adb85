//! DodoDB: an in-memory JSON key–value database and publish/subscribe
//! service with a checksummed write-ahead log, streamed JSON snapshots and
//! crash recovery. This crate is both the `dododb` server and the engine as
//! an embeddable library; the server is a thin HTTP layer over [`Db`].
//!
//! # Open, write, read
//!
//! [`Db::open`] takes a [`Config`]: [`Config::in_memory`] keeps nothing on
//! disk, [`Config::with_dir`] logs every write before it returns (fsync
//! per [`FsyncPolicy`]) and recovers the data on the next open. Values are
//! JSON documents, validated on write and returned byte for byte.
//!
//! ```
//! use dododb::{Config, Db, Precondition, PutOptions};
//!
//! let db = Db::open(Config::in_memory()).unwrap();
//! let written = db.put("user:1", br#"{"name": "Ada"}"#, PutOptions::default()).unwrap();
//! assert!(written.created);
//! let entry = db.get("user:1").unwrap().unwrap();
//! assert_eq!(&entry.value[..], br#"{"name": "Ada"}"#);
//! assert_eq!(entry.version, written.version);
//!
//! // Conditional writes, as with `If-Match` over HTTP.
//! let stale = PutOptions { precondition: Some(Precondition::IfVersion(written.version + 7)), ..Default::default() };
//! assert!(db.put("user:1", b"2", stale).is_err());
//! assert!(db.put("user:1", b"not json", PutOptions::default()).is_err());
//! assert_eq!(db.count(Some("user:")), 1);
//! db.close().unwrap();
//! ```
//!
//! # Subscribe to changes
//!
//! [`Db::subscribe`] calls a closure for every change of a key or of a
//! prefix, in version order, on a thread of its own; writes never wait for
//! it. Dropping the returned [`EventSubscription`] unsubscribes.
//! ([`Db::subscribe_webhook`] is the durable, HTTP-delivered kind.)
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//!
//! use dododb::{ChangeKind, Config, Db, PutOptions, Target};
//!
//! let db = Db::open(Config::in_memory()).unwrap();
//! let (tx, rx) = mpsc::channel();
//! let subscription = db.subscribe(Target::Prefix("user:".into()), move |event| {
//!     let _ = tx.send((event.key.to_string(), event.kind, event.version));
//! });
//! db.put("user:1", b"1", PutOptions::default()).unwrap();
//! db.put("other", b"2", PutOptions::default()).unwrap();
//! db.delete("user:1", None).unwrap();
//!
//! let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
//! assert_eq!(first, ("user:1".to_string(), ChangeKind::Update, 1));
//! let second = rx.recv_timeout(Duration::from_secs(10)).unwrap();
//! assert_eq!(second, ("user:1".to_string(), ChangeKind::Delete, 3));
//! drop(subscription);
//! ```
//!
//! # Serve it
//!
//! [`http::router`] builds the REST API over a `Db` (the `dododb` server
//! uses exactly this), and [`http::serve`] runs it with graceful shutdown.
//! `examples/embedded.rs` and `examples/client.rs` show both sides.
//!
//! # Modules
//!
//! Dependencies point one way: [`http`] → [`db`] → [`snapshot`] → [`wal`]
//! → [`store`], and [`db`] → [`events`] → [`store`]; [`value`] and
//! [`config`] depend on nothing else here.
//! `ARCHITECTURE.md` has the code map and its invariants.

#![deny(missing_docs)]

pub mod config;
pub mod db;
pub mod events;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
mod json_eq;
pub mod raft;
pub mod snapshot;
pub mod store;
pub mod value;
pub mod wal;

pub use config::{Config, FsyncPolicy, Storage};
pub use db::{
    Db, DbError, DbStats, EventSubscription, PutOptions, SnapshotInfo, Txn, TxnResult, WriteResult,
};
pub use events::subscriptions::Target;
pub use events::{ChangeEvent, ChangeKind};
pub use store::{Compare, Condition, Entry, EntryPage, ListPage, OpResult, Precondition};
