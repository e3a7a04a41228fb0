//! End-to-end tests: the real `lifeboat` binary against a local folder and a real S3-compatible
//! server on 127.0.0.1, with the application writing through its own SQLite connection in WAL
//! mode with autocheckpoint on.

mod support;

mod capture;
mod corruption;
mod crash;
mod deploy;
mod dirs;
mod dirs_ops;
mod disk_faults;
mod drill;
mod exclusion;
mod faults;
mod folder;
mod format2;
mod inputs;
mod lease;
mod node;
mod operator;
mod pacing;
mod packaging;
mod packing;
mod pitr;
mod replicate;
mod retention;
mod run;
mod run_failures;
mod s3;
mod status;
