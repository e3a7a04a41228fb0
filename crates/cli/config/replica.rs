//! A replica in the configuration file: a URL string, or a table with the URL and settings of
//! its own (`{ url = "...", retention = "90d" }`).

use std::time::Duration;

use lifeboat_agent::replica::ReplicaOverrides;
use serde::Deserialize;

/// A replica: its URL, or a table with the URL and settings of its own.
#[derive(Debug)]
pub(super) enum ReplicaEntry {
    Url(String),
    Table(ReplicaTable),
}

impl<'de> Deserialize<'de> for ReplicaEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match toml::Value::deserialize(d)? {
            toml::Value::String(url) => Ok(ReplicaEntry::Url(url)),
            t @ toml::Value::Table(_) => ReplicaTable::deserialize(t)
                .map(ReplicaEntry::Table)
                .map_err(|e| D::Error::custom(format!("in a replica table: {e}"))),
            other => Err(D::Error::custom(format!(
                "a replica is a URL string or a table with `url` (and `retention`, \
                 `snapshot-interval`, `snapshot-segments`), not a {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct ReplicaTable {
    url: String,
    #[serde(default, with = "super::humantime_serde_opt")]
    retention: Option<Duration>,
    #[serde(default, with = "super::humantime_serde_opt")]
    snapshot_interval: Option<Duration>,
    snapshot_segments: Option<u32>,
}

impl ReplicaEntry {
    pub(super) fn url(&self) -> &str {
        match self {
            ReplicaEntry::Url(u) => u,
            ReplicaEntry::Table(t) => &t.url,
        }
    }

    pub(super) fn overrides(&self) -> ReplicaOverrides {
        match self {
            ReplicaEntry::Url(_) => ReplicaOverrides::default(),
            ReplicaEntry::Table(t) => ReplicaOverrides {
                retention: t.retention,
                snapshot_interval: t.snapshot_interval,
                snapshot_segments: t.snapshot_segments,
            },
        }
    }
}
