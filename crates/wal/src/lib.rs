//! The byte formats of lifeboat, without I/O.
//!
//! Roles:
//! - [`sqlite`] reads SQLite's own write-ahead log: the 32-byte [`sqlite::WalHeader`], the frame
//!   headers, and the cumulative frame checksum that tells a valid frame from a stale or torn one.
//! - [`segment`] encodes and decodes a *segment*: a run of whole committed transactions, with a
//!   commit table and a CRC32 over the object; it reads format 1 (whole WAL frames, LZ4) and
//!   writes format 2 ([`segment::format2`]: page deltas grouped by page, zstd, frames rebuilt on
//!   decode).
//! - [`segment::any`] reads a segment of either format in two steps: verify the object, then
//!   rebuild its frames (for format 2, from the database state before it when deltas need it).
//! - [`pack`] stores consecutive small segments back to back in one object, for restores that
//!   read one object instead of many.
//! - [`snapshot`] streams a *snapshot*: a full database image in LZ4-compressed chunks, with a
//!   CRC32 over the object.
//! - [`checksum`] is the rolling database checksum (XOR of per-page hashes) that every snapshot and
//!   every commit records, so a restore can prove it rebuilt the database bit for bit.
//! - [`transaction`] walks a transaction's frames ([`transaction::Frames`]) and builds segments
//!   from transactions ([`transaction::SegmentBuilder`]): every reader of frames uses it.
//! - [`untrusted`] feeds the decoders any bytes, for the property tests and the fuzz targets.
//! - [`types`] holds the domain values ([`Generation`], [`TxId`]) that appear in keys and headers.
//!
//! Nothing here touches the file system, the network or a logger: callers hand in byte slices or
//! `io::Read`/`io::Write` values. `docs/format.md` in the repository describes every byte.
//!
//! ```
//! use lifeboat_wal::checksum::PageHashes;
//! let mut db = PageHashes::new(4096);
//! db.set_page(1, &[0u8; 4096]);
//! assert_ne!(db.checksum().0, 0);
//! ```
#![deny(missing_docs)]

pub mod checksum;
mod error;
pub mod pack;
pub mod segment;
pub mod snapshot;
pub mod sqlite;
pub mod transaction;
pub mod types;
pub mod untrusted;

/// [`segment::any`], under the name other crates know it by.
pub use segment::any as any_segment;
/// [`segment::format2`], under the name other crates know it by.
pub use segment::format2 as segment2;

pub use checksum::DbChecksum;
pub use error::Error;
pub use types::{Generation, TxId};

/// The version of the replica format this crate writes (its segments' version; snapshots keep
/// their own, [`snapshot::VERSION`]). Readers refuse newer versions.
pub const FORMAT_VERSION: u16 = segment::VERSION;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
