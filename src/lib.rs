//! DodoDB: an in-memory JSON key–value database and publish/subscribe
//! service with a checksummed write-ahead log, streamed JSON snapshots and
//! crash recovery. This crate is both the `dododb` server and the engine as
//! an embeddable library; the server is a thin HTTP layer over [`Db`].
//!
//! ```
//! use dododb::{Config, Db, PutOptions};
//!
//! let db = Db::open(Config::in_memory()).unwrap();
//! let written = db.put("user:1", br#"{"name": "Ada"}"#, PutOptions::default()).unwrap();
//! assert!(written.created);
//! let entry = db.get("user:1").unwrap().unwrap();
//! assert_eq!(&entry.value[..], br#"{"name": "Ada"}"#);
//! assert_eq!(entry.version, written.version);
//! ```

pub mod config;
pub mod db;
pub mod events;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod snapshot;
pub mod store;
pub mod value;
pub mod wal;

pub use config::{Config, FsyncPolicy, Storage};
pub use db::{Db, DbError, DbStats, PutOptions, SnapshotInfo, WriteResult};
pub use events::{ChangeEvent, ChangeKind};
pub use store::{Entry, ListPage, Precondition};
