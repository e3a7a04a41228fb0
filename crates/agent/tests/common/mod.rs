//! What the agent's tests share.

use std::path::Path;

use rusqlite::Connection;

/// Every page of a database as SQLite sees it (through `sqlite_dbpage`, WAL included).
pub fn pages(path: &Path) -> Vec<Vec<u8>> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .unwrap();
    s.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}
