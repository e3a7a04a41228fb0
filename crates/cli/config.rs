//! The configuration file, and turning arguments into databases to replicate.
//!
//! ```toml
//! [[databases]]
//! path = "/data/app.db"
//! puts-per-second = 1.0          # optional
//! replicas = ["s3://my-bucket/app?region=${AWS_REGION}", "file:///mnt/backup/app"]
//!
//! [[folders]]                    # every database in the folder, each under <replica>/<name>
//! path = "/data/tenants"         # or "/data/tenants/*.sqlite" (default pattern: *.db)
//! replicas = ["s3://my-bucket/tenants"]
//! ```
//! `${VAR}` is replaced by the environment variable `VAR` (an unset variable is an error;
//! `${VAR:-default}` gives a default). Credentials never go in this file: S3 credentials come from
//! the standard AWS environment variables and configuration files.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lifeboat_agent::agent::DbConfig;
use lifeboat_agent::folder::FolderConfig;
use lifeboat_agent::replica::ReplicaOverrides;
use lifeboat_agent::Options;
use serde::Deserialize;

use crate::replica_url;

/// Where the databases come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A configuration file.
    File(PathBuf),
    /// One database and its replica URLs, from the command line.
    Args { db: PathBuf, urls: Vec<String> },
    /// A folder of databases (and maybe a pattern) and its replica URLs, from the command line.
    Dir { spec: PathBuf, urls: Vec<String> },
}

impl Source {
    /// A configuration file if one is given, else the database and URLs.
    pub fn new(config: Option<PathBuf>, db: Option<PathBuf>, urls: Vec<String>) -> Result<Source> {
        if let Some(path) = config {
            return Ok(Source::File(path));
        }
        let db = db.context("a database path is required")?;
        if urls.is_empty() {
            bail!("give at least one replica URL after the database path");
        }
        Ok(Source::Args { db, urls })
    }

    /// A folder of databases and its replica URLs.
    pub fn dir(spec: PathBuf, urls: Vec<String>) -> Result<Source> {
        if urls.is_empty() {
            bail!("give at least one replica URL after --dir-of-databases");
        }
        Ok(Source::Dir { spec, urls })
    }
}

/// Settings given on the command line. Each one beats the same setting in the configuration
/// file: a flag is the more specific, later decision.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    /// `--puts-per-second`.
    pub puts_per_second: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    databases: Vec<Database>,
    /// Folders of databases: `path` is a folder, or a folder and a file pattern
    /// (`/data/tenants/*.db`); the other settings are those of a database.
    #[serde(default)]
    folders: Vec<Database>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Database {
    path: PathBuf,
    replicas: Vec<ReplicaEntry>,
    puts_per_second: Option<f64>,
    put_burst: Option<f64>,
    checkpoint_pages: Option<u32>,
    max_wal_bytes: Option<u64>,
    truncate_wal_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde_opt")]
    poll_interval: Option<Duration>,
    staging_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    retention: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    snapshot_interval: Option<Duration>,
    snapshot_segments: Option<u32>,
}

/// A replica: its URL, or a table with the URL and settings of its own.
#[derive(Debug)]
enum ReplicaEntry {
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
struct ReplicaTable {
    url: String,
    #[serde(default, with = "humantime_serde_opt")]
    retention: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    snapshot_interval: Option<Duration>,
    snapshot_segments: Option<u32>,
}

impl ReplicaEntry {
    fn url(&self) -> &str {
        match self {
            ReplicaEntry::Url(u) => u,
            ReplicaEntry::Table(t) => &t.url,
        }
    }

    fn overrides(&self) -> ReplicaOverrides {
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

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Replaces `${VAR}` and `${VAR:-default}`.
pub fn expand_env(text: &str, get: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            bail!("unterminated ${{ in configuration");
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("invalid variable name {name:?} in configuration");
        }
        match (get(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => bail!("environment variable {name} is not set (used in configuration)"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The options of one database of the configuration file, with the command-line `flags` on top.
fn options(d: &Database, flags: &Flags) -> Options {
    let mut options = Options::default();
    if let Some(v) = flags.puts_per_second.or(d.puts_per_second) {
        options.puts_per_second = v;
    }
    if let Some(v) = d.put_burst {
        options.put_burst = v;
    }
    if let Some(v) = d.checkpoint_pages {
        options.checkpoint_pages = v;
    }
    if let Some(v) = d.max_wal_bytes {
        options.max_wal_bytes = v;
    }
    if let Some(v) = d.truncate_wal_bytes {
        options.truncate_wal_bytes = v;
    }
    if let Some(v) = d.poll_interval {
        options.poll_interval = v;
    }
    if let Some(v) = &d.staging_dir {
        options.staging_dir = v.clone();
    }
    options.retention = d.retention;
    if let Some(v) = d.snapshot_interval {
        options.snapshot_interval = Some(v);
    }
    if let Some(v) = d.snapshot_segments {
        options.snapshot_segments = v;
    }
    options
}

/// Reads and checks a configuration file (`${VAR}` expanded).
fn read_file(path: &std::path::Path) -> Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration {}", path.display()))?;
    let text = expand_env(&text, |k| std::env::var(k).ok())
        .with_context(|| format!("in {}", path.display()))?;
    let file: File = toml::from_str(&text)
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    if file.databases.is_empty() && file.folders.is_empty() {
        bail!("{} lists no databases and no folders", path.display());
    }
    if let Some(d) = file
        .databases
        .iter()
        .chain(&file.folders)
        .find(|d| d.replicas.is_empty())
    {
        bail!(
            "database {} has no replicas in {}",
            d.path.display(),
            path.display()
        );
    }
    Ok(file)
}

/// The databases to replicate, from a config file or from the command line; `flags` beat the
/// file.
pub async fn databases(src: &Source, flags: &Flags) -> Result<Vec<DbConfig>> {
    let mut out = Vec::new();
    match src {
        Source::File(path) => {
            for d in read_file(path)?.databases {
                let options = options(&d, flags);
                let mut replicas = Vec::new();
                for r in &d.replicas {
                    replicas.push(replica_url::open(r.url()).await?);
                }
                out.push(DbConfig {
                    path: d.path,
                    replicas,
                    options,
                    overrides: d.replicas.iter().map(ReplicaEntry::overrides).collect(),
                });
            }
        }
        Source::Args { db, urls } => {
            let mut options = Options::default();
            if let Some(v) = flags.puts_per_second {
                options.puts_per_second = v;
            }
            let mut replicas = Vec::new();
            for u in urls {
                replicas.push(replica_url::open(u).await?);
            }
            out.push(DbConfig {
                path: db.clone(),
                replicas,
                options,
                overrides: Vec::new(),
            });
        }
        Source::Dir { .. } => {}
    }
    Ok(out)
}

/// The folders of databases to replicate, from a config file or from the command line; `flags`
/// beat the file. Each replica URL is opened once, and all the folder's databases share it.
pub async fn folders(src: &Source, flags: &Flags) -> Result<Vec<FolderConfig>> {
    let mut out = Vec::new();
    match src {
        Source::File(path) => {
            for d in read_file(path)?.folders {
                let mut replicas = Vec::new();
                for r in &d.replicas {
                    replicas.push(replica_url::open(r.url()).await?);
                }
                let (dir, pattern) = FolderConfig::split_spec(&d.path);
                out.push(FolderConfig {
                    dir,
                    pattern,
                    replicas,
                    options: options(&d, flags),
                    overrides: d.replicas.iter().map(ReplicaEntry::overrides).collect(),
                    restored: Default::default(),
                });
            }
        }
        Source::Dir { spec, urls } => {
            let mut options = Options::default();
            if let Some(v) = flags.puts_per_second {
                options.puts_per_second = v;
            }
            let mut replicas = Vec::new();
            for u in urls {
                replicas.push(replica_url::open(u).await?);
            }
            let (dir, pattern) = FolderConfig::split_spec(spec);
            out.push(FolderConfig {
                dir,
                pattern,
                replicas,
                options,
                overrides: Vec::new(),
                restored: Default::default(),
            });
        }
        Source::Args { .. } => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "BUCKET").then(|| "b1".to_string())
    }

    #[test]
    fn expands_variables() {
        assert_eq!(expand_env("s3://${BUCKET}/x", env).unwrap(), "s3://b1/x");
        assert_eq!(expand_env("${NOPE:-d}", env).unwrap(), "d");
        assert!(expand_env("${NOPE}", env)
            .unwrap_err()
            .to_string()
            .contains("NOPE"));
        assert!(expand_env("${BUCKET", env).is_err());
    }

    /// A file with one database at /data/app.db, with `rest` added to its table.
    fn one_database(rest: &str) -> File {
        toml::from_str(&format!("[[databases]]\npath = '/data/app.db'\n{rest}\n")).unwrap()
    }

    #[test]
    fn parses_a_config() {
        let f = one_database("replicas = ['file:///tmp/r']\npoll-interval = '500ms'");
        assert_eq!(
            f.databases[0].poll_interval,
            Some(Duration::from_millis(500))
        );
    }

    #[test]
    fn a_replica_may_be_a_table_with_its_own_settings() {
        let f = one_database(
            r#"replicas = ["file:///tmp/r", { url = "s3://b/p", retention = "30d", snapshot-interval = "1h" }]"#,
        );
        let r = &f.databases[0].replicas;
        assert_eq!(r[0].url(), "file:///tmp/r");
        assert_eq!(r[0].overrides(), ReplicaOverrides::default());
        assert_eq!(r[1].url(), "s3://b/p");
        assert_eq!(
            r[1].overrides().retention,
            Some(Duration::from_secs(30 * 86400))
        );
        assert_eq!(
            r[1].overrides().snapshot_interval,
            Some(Duration::from_secs(3600))
        );
        let e = toml::from_str::<File>(
            "[[databases]]\npath='x'\nreplicas=[{ url = 'file:///r', retentoin = '1d' }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("retentoin"), "{e}");
        let e = toml::from_str::<File>("[[databases]]\npath='x'\nreplicas=[3]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("URL string or a table"), "{e}");
    }

    /// Regression: `puts-per-second` in the file used to beat `--puts-per-second`.
    #[test]
    fn a_flag_beats_the_configuration_file() {
        let f: File = toml::from_str(
            "[[databases]]\npath='x'\nreplicas=['file:///r']\nputs-per-second = 5.0\n",
        )
        .unwrap();
        let d = &f.databases[0];
        assert_eq!(options(d, &Flags::default()).puts_per_second, 5.0);
        let flags = Flags {
            puts_per_second: Some(0.5),
        };
        assert_eq!(options(d, &flags).puts_per_second, 0.5);
    }

    #[tokio::test]
    async fn a_flag_beats_the_configuration_file_for_every_database_it_lists() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("lifeboat.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[databases]]\npath = 'a.db'\nreplicas = ['file://{0}/a']\nputs-per-second = 5.0\n\
                 [[databases]]\npath = 'b.db'\nreplicas = ['file://{0}/b']\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let src = Source::File(cfg);
        let from_file = databases(&src, &Flags::default()).await.unwrap();
        assert_eq!(from_file[0].options.puts_per_second, 5.0);
        assert_eq!(from_file[1].options.puts_per_second, 1.0);
        let flags = Flags {
            puts_per_second: Some(20.0),
        };
        let dbs = databases(&src, &flags).await.unwrap();
        assert!(dbs.iter().all(|d| d.options.puts_per_second == 20.0));
    }

    #[test]
    fn a_folder_of_databases_takes_a_folder_or_a_pattern() {
        let f: File = toml::from_str(
            "[[folders]]\npath = '/data/tenants/*.sqlite'\nreplicas = ['file:///r']\n\
             puts-per-second = 2.0\n",
        )
        .unwrap();
        assert!(f.databases.is_empty());
        let d = &f.folders[0];
        assert_eq!(options(d, &Flags::default()).puts_per_second, 2.0);
        assert_eq!(
            FolderConfig::split_spec(&d.path),
            (PathBuf::from("/data/tenants"), "*.sqlite".to_string())
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(
            toml::from_str::<File>("[[databases]]\npath='x'\nreplicas=[]\nsecret='y'\n").is_err()
        );
    }
}
