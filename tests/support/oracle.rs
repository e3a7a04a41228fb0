//! Independent oracles: what the writer itself knew, to check a restore against.
//!
//! Nothing here shares code with lifeboat's checksums, frames or restore: pages are read through
//! rusqlite (`sqlite_dbpage`) or from the raw file and hashed with the standard library's
//! SipHash (`DefaultHasher::new()`, fixed keys), and rows are read with plain SQL. A restore that
//! is compared with these can only pass by holding what the writer wrote at that point.

#![allow(dead_code)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

/// The digest of a database image: its page count and a hash over every page in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub pages: usize,
    pub hash: u64,
}

/// Hashes pages one at a time (a database may be larger than memory should hold).
#[derive(Default)]
struct PageHasher {
    h: DefaultHasher,
    pages: usize,
}

impl PageHasher {
    fn add(&mut self, page: &[u8]) {
        page.hash(&mut self.h);
        self.pages += 1;
    }

    fn finish(self) -> Digest {
        Digest {
            pages: self.pages,
            hash: self.h.finish(),
        }
    }
}

/// The database as the connection `c` sees it now (its WAL included), page by page.
pub fn conn_digest(c: &Connection) -> Digest {
    let mut s = c
        .prepare_cached("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .unwrap();
    let mut rows = s.query([]).unwrap();
    let mut h = PageHasher::default();
    while let Some(r) = rows.next().unwrap() {
        h.add(r.get_ref(0).unwrap().as_blob().unwrap());
    }
    h.finish()
}

/// A database file's bytes, page by page, read raw (for a restored file, which has no WAL).
pub fn file_digest(path: &Path) -> Digest {
    use std::io::Read;
    let mut f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut head = vec![0u8; 100];
    f.read_exact(&mut head).unwrap();
    let ps = u16::from_be_bytes([head[16], head[17]]);
    let ps = if ps == 1 { 65536 } else { ps as usize };
    let len = std::fs::metadata(path).unwrap().len() as usize;
    assert_eq!(len % ps, 0, "{} is not whole pages", path.display());
    let mut page = head;
    page.resize(ps, 0);
    f.read_exact(&mut page[100..]).unwrap();
    let mut h = PageHasher::default();
    h.add(&page);
    for _ in 1..len / ps {
        f.read_exact(&mut page).unwrap();
        h.add(&page);
    }
    h.finish()
}

/// The `seq` column of the `marks` table, in order: the writer's marker rows.
pub fn markers(db: &Path) -> Vec<u64> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT seq FROM marks ORDER BY seq").unwrap();
    s.query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|r| r.unwrap() as u64)
        .collect()
}

/// Asserts `got` is `0..=n` for some `n` (a gap-free prefix of the writer's sequence starting
/// at `first`) no longer than what the writer committed, and returns its length.
pub fn assert_gap_free_prefix(got: &[u64], first: u64, committed: u64, what: &str) -> u64 {
    for (i, s) in got.iter().enumerate() {
        assert_eq!(
            *s,
            first + i as u64,
            "{what}: marker {i} is {s}, want {} (a gap or a reordering)",
            first + i as u64
        );
    }
    assert!(
        got.len() as u64 <= committed,
        "{what}: {} markers restored but the writer committed only {committed}",
        got.len()
    );
    got.len() as u64
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One commit as the writer saw it.
#[derive(Clone, Debug)]
pub struct Commit {
    /// The marker row it added.
    pub seq: u64,
    /// Which agent run (generation) was replicating when it committed; `None` while none ran.
    pub generation: Option<usize>,
    /// Its transaction number within that generation (txid 0 being the generation's snapshot).
    pub txid: Option<u64>,
    /// A time at which the writer knew the commit was done and the next had not begun.
    pub after_ms: u64,
    /// The database right after it, as the writer's connection saw it.
    pub digest: Digest,
}

/// The writer's record of every commit, for point-in-time oracles.
#[derive(Debug, Default)]
pub struct History {
    pub commits: Vec<Commit>,
    /// Per generation: how many markers existed when its agent started (its snapshot's state).
    pub base: Vec<u64>,
    current: Option<(usize, u64)>,
}

impl History {
    /// An agent starts a generation now: its snapshot holds every marker committed so far.
    pub fn generation_started(&mut self) -> usize {
        let g = self.base.len();
        self.base.push(self.commits.len() as u64);
        self.current = Some((g, 0));
        g
    }

    /// The agent stopped: commits from now on belong to no generation until the next start.
    pub fn generation_stopped(&mut self) {
        self.current = None;
    }

    /// Commits one marker row on `c` and records it. `settle` runs after the commit and before
    /// the time is taken (e.g. waits until the agent has shipped it).
    pub fn commit(&mut self, c: &Connection, pad: usize, settle: impl FnOnce(Option<u64>)) {
        let seq = self.commits.len() as u64;
        // Restore points are milliseconds: a commit in the same millisecond as the previous
        // one's `after_ms` would count as at or before it. Let the clock move on first.
        if let Some(prev) = self.commits.last() {
            while now_ms() <= prev.after_ms {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        c.execute(
            "INSERT INTO marks(seq, t, pad) VALUES (?1, 0, ?2)",
            rusqlite::params![seq as i64, "p".repeat(pad)],
        )
        .unwrap();
        let (generation, txid) = match &mut self.current {
            Some((g, t)) => {
                *t += 1;
                (Some(*g), Some(*t))
            }
            None => (None, None),
        };
        settle(txid);
        self.commits.push(Commit {
            seq,
            generation,
            txid,
            after_ms: now_ms(),
            digest: conn_digest(c),
        });
    }

    /// The markers a restore of `generation` at `txid` must hold: exactly `0..base + txid`.
    pub fn markers_at_txid(&self, generation: usize, txid: u64) -> Vec<u64> {
        (0..self.base[generation] + txid).collect()
    }
}
