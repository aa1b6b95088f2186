//! NoKV's embedded storage engine: a durable, crash-safe LSM key-value store.
//!
//! ```no_run
//! let db = nokv::Db::open("/tmp/nokv-example", nokv::Options::default())?;
//! db.put(b"hello", b"world")?;
//! assert_eq!(db.get(b"hello")?, Some(b"world".to_vec()));
//! db.close()?;
//! # Ok::<(), nokv::Error>(())
//! ```
//!
//! Layout: [`wal`] (write-ahead log), [`memtable`], [`sst`] (tables),
//! [`manifest`] + [`version`] (which files are live), [`compaction`], [`fs`]
//! (the IO boundary), and [`Db`] tying them together. The byte formats are
//! described in `docs/format.md`.

pub mod batch;
pub mod cache;
pub mod clock;
pub mod codec;
pub mod compaction;
pub mod db;
pub mod db_iter;
pub mod error;
pub mod filename;
pub mod fs;
/// Entry points for the fuzz targets in `engine/fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing;
pub mod iter;
pub mod key;
pub mod manifest;
pub mod memtable;
pub mod merge;
pub mod options;
pub mod priority;
pub mod range_del;
pub mod record;
pub mod region_snapshot;
pub mod snapshot;
pub mod sst;
pub mod stats;
pub mod txn;
pub mod version;
pub mod vlog;
pub mod wal;

#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub use fail as __fail;

/// A named crash point (docs/testing.md, "Failpoints"): with the `failpoints` feature and
/// `FAILPOINTS="<name>=return"` (or `"<name>=N*off->return"`: the N+1th time) the process
/// aborts here; `sleep(ms)`, `pause` and `panic` work as the `fail` crate says. Nothing
/// without the feature.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {
        $crate::__fail::fail_point!($name, |_| {
            eprintln!("crash point {} reached: aborting", $name);
            ::std::process::abort()
        })
    };
}

/// A named crash point: nothing without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {};
}

pub use batch::WriteBatch;
pub use db::{Db, Entry, WriteStall};
pub use db_iter::DbIterator;
pub use error::{Error, Result};
pub use key::{KeySpace, CF_DEFAULT, CF_LOCK, CF_WRITE, NS_KV, NS_META, NS_REDIS};
pub use options::{
    Compression, Durability, IoBackend, Options, ReadOptions, ReadTier, WriteOptions,
};
pub use region_snapshot::{ExportOptions, IngestReport, RegionRange, SnapshotManifest};
pub use snapshot::Snapshot;
pub use stats::{LevelStats, Stats};
pub use wal::WalPosition;
