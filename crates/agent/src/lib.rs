//! lifeboat's agent: replicate a live SQLite database and restore it.
//!
//! # Layout
//! Capturing the WAL:
//! - [`walfile`] reads the application's `-wal` file: whole committed transactions, checked
//!   frame by frame with SQLite's own checksum, and whether the log restarted cleanly
//!   ([`walfile::Cursor`] is a place in it).
//! - [`dbfile`] checks what is at a database path before it is opened (a WAL database, not a
//!   folder, an empty file or a rollback-journal database switched without being asked).
//! - [`db`] is the agent's side of the database: its connections, the *pin* (a read transaction
//!   that keeps SQLite from recycling frames the agent has not shipped), checkpoints, consistent
//!   page images.
//!
//! Replicating one database (a [`replicator::Replicator`] coordinates a pass over these):
//! - [`replica`] is one replica: its [`replica::Phase`] (unknown, needing a generation and why,
//!   shipping in one, halted), its state in the WAL, and the one failure rule.
//! - `resume` proves that the local database is a replica's last state before resuming it.
//! - `replica::shipping` builds and uploads a replica's next segment (per-replica work, on the
//!   replica);
//!   [`bases`] finds each page's verified previous version for the segment's page deltas.
//! - `checkpoints` moves the pin and lets the WAL restart, carrying unshipped tails.
//! - `snapshots` starts new generations and takes scheduled snapshots; [`staging`] holds their
//!   files before upload.
//! - `commit_times` records when each commit was seen and counts what a replica lacks.
//! - [`retention`] plans and runs prunes (in the background while the agent runs).
//! - [`agent`] runs one database's replicator as a task, paced by its PUT budget ([`budget`]);
//!   [`supervisor`] starts a set of them (and folders of databases) and stops them together
//!   with a final sync; `scheduler` runs their passes on a bounded set of worker slots;
//!   [`watcher`] is the agent's one file-system watcher, routing events to the database they
//!   concern; [`folder`] replicates a folder of databases as one.
//! - [`status`] is what the agent reports about itself, and the health rule.
//!
//! One writer per replica path:
//! - [`lease`] takes, renews, hands over and releases the writer lease (`lease.json`, kept with
//!   conditional writes); its gate (checked before every upload) and the fence every leased
//!   generation carries are in `lease::gate`, a handoff request in `lease::handoff`;
//!   [`catalog::fences`] is how readers set aside what an older epoch wrote after a takeover.
//! - [`flush`] is durable acknowledgements: wait until everything committed is in every replica.
//!
//! Reading a replica:
//! - [`catalog`] lists what a replica holds (typed snapshots and segments per generation);
//!   [`restore`] plans and rebuilds a database from it, verifying everything; [`verify`] reads
//!   every object; [`drill`] restores, checks and compares with the live database.
//!
//! Shared: [`files`] (SQLite files on disk: hashing, integrity check, `sqlite_dbpage`, fsync),
//! [`clock`] (Unix milliseconds), [`Error`].
//!
//! Modules depend on each other in one direction (no import circle among them; a module's
//! own submodules, as `lease::gate` or `replica::shipping`, count as part of it).
//!
//! The design, and why the pin makes WAL restarts safe to follow, is in `docs/design.md`.
#![deny(missing_docs)]

pub mod agent;
pub mod bases;
pub mod budget;
pub mod catalog;
mod checkpoints;
pub mod clock;
mod commit_times;
mod context;
pub mod db;
pub mod dbfile;
pub mod drill;
mod error;
pub mod files;
pub mod flush;
pub mod folder;
pub mod lease;
pub mod replica;
pub mod replicator;
pub mod restore;
mod resume;
pub mod retention;
mod scheduler;
mod snapshots;
pub mod staging;
pub mod status;
pub mod supervisor;
mod upload;
pub mod verify;
pub mod walfile;
pub mod watcher;

use std::path::PathBuf;
use std::time::Duration;

pub use error::{Chain, Error, Result};

/// The fewest segments since the last snapshot that call for a fresh one by
/// [`Options::snapshot_ratio`]: a snapshot is one more PUT, so this bounds what the ratio adds to
/// the uploads at one in seventeen (as packing does), however small the database.
pub const SNAPSHOT_RATIO_MIN_SEGMENTS: u32 = 16;

/// Tuning for one database's replication. The defaults suit a small web app.
#[derive(Clone, Debug)]
pub struct Options {
    /// Average PUT requests per second per database once the burst is spent (default 1).
    pub puts_per_second: f64,
    /// PUTs that may go out back to back after a quiet spell (default 4), so an idle or lightly
    /// written database ships each commit at once.
    pub put_burst: f64,
    /// WAL frames after which the agent runs a PASSIVE checkpoint (default 1000).
    pub checkpoint_pages: u32,
    /// If a replica is unreachable and the WAL grows past this many bytes, the agent stops
    /// holding the WAL for it (the app's checkpoints resume) and starts a new generation when it
    /// returns (default 256 MiB).
    pub max_wal_bytes: u64,
    /// When the WAL file is larger than this after the agent's checkpoint, truncate it with a
    /// TRUNCATE checkpoint (default 128 MiB), at most once per 10 s. The file otherwise keeps its
    /// largest size.
    pub truncate_wal_bytes: u64,
    /// Largest segment read from the WAL, in raw frame bytes (default 64 MiB; a bigger single
    /// transaction still fits in one). A restore holds one segment's frames at a time.
    pub max_segment_bytes: usize,
    /// Most memory a segment being built may hold: the encoded changes, and pages' latest
    /// versions up to an eighth of it (past that they are let go, and read back from the WAL,
    /// verified by hash, when their page is written again) (default 4 MiB). Past it the segment
    /// is cut and the rest goes into the next, so a replica catching up on a backlog ships few,
    /// large segments within a bounded memory.
    pub max_segment_memory: usize,
    /// How often to look at the WAL when no file-system event arrives (default 1 s).
    pub poll_interval: Duration,
    /// How long the final sync on shutdown may take (default 30 s).
    pub shutdown_timeout: Duration,
    /// Where snapshots are staged before upload (default: the system temp folder).
    pub staging_dir: PathBuf,
    /// Take a fresh snapshot within the current generation this often (default 24 h), so that
    /// restoring the newest state reads one snapshot and what came after it. `None`: never.
    pub snapshot_interval: Option<Duration>,
    /// Also take one once this many segments were shipped since the last snapshot (default
    /// 1000), which bounds the objects a restore of the newest state reads however busy the
    /// database is.
    pub snapshot_segments: u32,
    /// Also take one once the segments shipped since the last snapshot hold this many times its
    /// bytes (default 4; 0: never) and number at least [`SNAPSHOT_RATIO_MIN_SEGMENTS`], so that a restore of
    /// the newest state reads about as much as the database holds, not as much as its history
    /// since the last snapshot: each such snapshot costs at most a quarter of the bytes shipped
    /// since the one before.
    pub snapshot_ratio: u32,
    /// Pack this many consecutive small segments into one object once stored, deleting the
    /// originals (default 16; below 2: never), so a restore reads one object where it read
    /// many. See `replica::packing`.
    pub pack_segments: usize,
    /// Keep restore points this far back; older generations are deleted when no restore point
    /// inside the window needs them (see [`retention`]). `None` (the default) keeps everything.
    pub retention: Option<Duration>,
    /// Whether to resume a replica's newest generation when the local database provably is its
    /// last state (default). `false` always starts a new generation: for a database just
    /// restored from the replica, so that an instance still running elsewhere on the old
    /// generation (an overlapping deploy) cannot fork it.
    pub resume: bool,
    /// What to do on start-up when a replica already holds history that the local database
    /// provably does not continue (default: start a new generation).
    pub on_divergence: OnDivergence,
    /// A replica further behind than this (the age of the oldest commit it does not have yet)
    /// counts as unhealthy in `/health` (default 60 s).
    pub health_max_lag: Duration,
    /// Told how far a snapshot of a large database has read it (`(bytes read, bytes in all)`,
    /// every 4096 pages, then once at the end); a small one reports nothing.
    pub snapshot_progress: Option<restore::Progress>,
    /// The writer lease this agent holds, if any (see [`lease`]): every generation it starts is
    /// fenced with its epoch, and no upload starts unless the lease is held and renewed.
    pub lease: Option<lease::Fencing>,
    /// Folders backed up with the database (`--dir`), shipped before the commits that follow
    /// them (see `lifeboat_dirs`).
    pub dirs: Vec<lifeboat_dirs::DirSpec>,
    /// Whether a database in rollback-journal mode (or an empty file) may be switched to WAL
    /// mode (default `false`: it is refused, naming the setting; see [`dbfile`]). The switch is
    /// persistent and changes how every connection of the app uses the file.
    pub switch_to_wal: bool,
}

/// What to do when a replica's newest state is not the local database's past (a stale disk
/// brought back from an old image, or a database changed while lifeboat was not watching).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDivergence {
    /// Start a new generation from the local database; the older history stays in the replica.
    #[default]
    NewGeneration,
    /// Refuse to start ([`Error::Diverged`]), so a restore from the replica stays the newest.
    Refuse,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            puts_per_second: 1.0,
            put_burst: 4.0,
            checkpoint_pages: 1000,
            max_wal_bytes: 256 << 20,
            truncate_wal_bytes: 128 << 20,
            max_segment_bytes: 64 << 20,
            max_segment_memory: 4 << 20,
            poll_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            staging_dir: std::env::temp_dir(),
            on_divergence: OnDivergence::default(),
            resume: true,
            retention: None,
            snapshot_interval: Some(Duration::from_secs(24 * 3600)),
            snapshot_segments: 1000,
            snapshot_ratio: 4,
            pack_segments: crate::replica::packing::PACK_PARTS,
            health_max_lag: status::STALL,
            snapshot_progress: None,
            lease: None,
            dirs: Vec::new(),
            switch_to_wal: false,
        }
    }
}

/// The version of the SQLite library lifeboat is built with.
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}
