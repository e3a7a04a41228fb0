//! Backing up the folders next to a database (an app's uploads), restorable to the same point
//! in time as the database.
//!
//! Roles: a [`folder::Folder`] captures a folder's state from file-system events, folder
//! mtimes and a periodic rescan (and, for a flush, a stat of every file), taking files only
//! once they are stable; [`DirShipper`] ships
//! each folder to the database's replicas when the agent asks, before the database commits that
//! follow (so the files those commits refer to are always there); [`entry`] is one path's record
//! and [`manifest`] a chain of them over time; [`restore`] rebuilds a folder as of a database
//! restore point; [`verify`] checks every manifest and blob; [`prune`] keeps what kept restore
//! points need; [`status`] says how each folder's shipping goes (for `/health` and metrics).
//!
//! In a replica, a file's content is a *blob* stored once under its SHA-256
//! (`files/blobs/<sha256>-<created>`, create-only), shared by every copy, rename and generation
//! while the content stays in the folder; each
//! folder has a chain of manifests (`files/<name>/manifests/...`) tagged with the database
//! position they were captured after. The format and the consistency rule are in
//! `docs/format.md`.
#![deny(missing_docs)]

pub mod entry;
mod error;
pub mod folder;
pub mod manifest;
pub mod prune;
pub mod restore;
mod shipper;
mod spec;
pub mod status;
pub mod verify;

pub use error::{Error, Result};

/// Copies of file contents staged for upload are named `<this><pid>-…` in the staging folder, so
/// that an agent starting later removes those a killed one left (see the agent's `staging`).
pub const STAGED_PREFIX: &str = "lifeboat-blob-";

/// The name prefix of this process's staged copies.
pub(crate) fn staged_name_prefix() -> String {
    format!("{STAGED_PREFIX}{}-", std::process::id())
}
pub use shipper::{DirShipper, FlushReport};
pub use spec::{DirOptions, DirSpec};
