use super::*;
use lifeboat_agent::replica::ReplicaOverrides;

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
fn a_database_lists_its_folders_and_two_folders_may_not_share_a_name() {
    let f = one_database("replicas = ['file:///tmp/r']\ndirs = ['/data/uploads', 'docs=/data/d']");
    let specs = dir_specs(&f.databases[0].dirs).unwrap();
    let names: Vec<_> = specs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["uploads", "docs"]);
    assert_eq!(specs[1].path, PathBuf::from("/data/d"));
    let e = dir_specs(&["/a/up".into(), "/b/up".into()]).unwrap_err();
    assert!(e.to_string().contains("NAME=PATH"), "{e}");
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
    let f: File =
        toml::from_str("[[databases]]\npath='x'\nreplicas=['file:///r']\nputs-per-second = 5.0\n")
            .unwrap();
    let d = &f.databases[0];
    assert_eq!(options(d, &Flags::default()).unwrap().puts_per_second, 5.0);
    let flags = Flags {
        puts_per_second: Some(0.5),
        ..Flags::default()
    };
    assert_eq!(options(d, &flags).unwrap().puts_per_second, 0.5);
}

#[test]
fn snapshot_ratio_defaults_to_4_and_the_flag_beats_the_file() {
    let d = &one_database("replicas = ['file:///r']").databases[0];
    assert_eq!(options(d, &Flags::default()).unwrap().snapshot_ratio, 4);
    let d = &one_database("replicas = ['file:///r']\nsnapshot-ratio = 2").databases[0];
    assert_eq!(options(d, &Flags::default()).unwrap().snapshot_ratio, 2);
    let flags = Flags {
        snapshot_ratio: Some(0),
        ..Flags::default()
    };
    assert_eq!(options(d, &flags).unwrap().snapshot_ratio, 0);
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
        ..Flags::default()
    };
    let dbs = databases(&src, &flags).await.unwrap();
    assert!(dbs.iter().all(|d| d.options.puts_per_second == 20.0));
}

#[test]
fn a_folder_of_databases_takes_a_folder_or_a_pattern() {
    let f: File = toml::from_str(
        "[[database-folders]]\npath = '/data/tenants/*.sqlite'\nreplicas = ['file:///r']\n\
         puts-per-second = 2.0\n",
    )
    .unwrap();
    assert!(f.databases.is_empty());
    let d = &f.folders[0];
    assert_eq!(options(d, &Flags::default()).unwrap().puts_per_second, 2.0);
    assert_eq!(
        FolderConfig::split_spec(&d.path),
        (PathBuf::from("/data/tenants"), "*.sqlite".to_string())
    );
}

#[test]
fn the_configuration_file_is_found_by_flag_then_environment_then_etc() {
    let env = |k: &str| (k == "LIFEBOAT_CONFIG").then(|| "/srv/lb.toml".to_string());
    let none = |_: &str| None;
    let empty = |_: &str| Some(String::new());
    let flag = Some(PathBuf::from("my.toml"));
    assert_eq!(locate(flag.clone(), env), PathBuf::from("my.toml"));
    assert_eq!(locate(None, env), PathBuf::from("/srv/lb.toml"));
    assert_eq!(locate(None, none), PathBuf::from("/etc/lifeboat.toml"));
    assert_eq!(locate(None, empty), PathBuf::from("/etc/lifeboat.toml"));
}

#[test]
fn retention_defaults_to_30_days_and_the_flag_beats_the_file() {
    let d = &one_database("replicas = ['file:///r']").databases[0];
    assert_eq!(
        options(d, &Flags::default()).unwrap().retention,
        Some(DEFAULT_RETENTION)
    );
    let d = &one_database("replicas = ['file:///r']\nretention = 'off'").databases[0];
    assert_eq!(options(d, &Flags::default()).unwrap().retention, None);
    let d = &one_database("replicas = ['file:///r']\nretention = '7d'").databases[0];
    assert_eq!(
        options(d, &Flags::default()).unwrap().retention,
        Some(Duration::from_secs(7 * 86400))
    );
    let flags = Flags {
        retention: Some("12h".parse().unwrap()),
        snapshot_interval: Some(Duration::from_secs(600)),
        ..Flags::default()
    };
    let o = options(d, &flags).unwrap();
    assert_eq!(o.retention, Some(Duration::from_secs(12 * 3600)));
    assert_eq!(o.snapshot_interval, Some(Duration::from_secs(600)));
    assert!("0s".parse::<Retention>().is_err());
    assert!("forever".parse::<Retention>().unwrap_err().contains("off"));
}

#[test]
fn rejects_unknown_keys() {
    assert!(toml::from_str::<File>("[[databases]]\npath='x'\nreplicas=[]\nsecret='y'\n").is_err());
}

/// The error `options` gives for a database with `rest` in its table and `flags`.
fn refused(rest: &str, flags: &Flags) -> String {
    let f = one_database(&format!("replicas = ['file:///r']\n{rest}"));
    options(&f.databases[0], flags)
        .map(|_| ())
        .expect_err("refused")
        .to_string()
}

/// Regression: `poll-interval = "0s"` looked at the WAL in a loop and kept a core busy.
#[test]
fn a_zero_poll_interval_is_refused_with_its_name_and_value() {
    let e = refused("poll-interval = '0s'", &Flags::default());
    assert!(
        e.contains("poll-interval = \"0s\"") && e.contains("/data/app.db") && e.contains("10ms"),
        "{e}"
    );
    let e = refused("poll-interval = '1ms'", &Flags::default());
    assert!(e.contains("poll-interval = \"1ms\""), "{e}");
    let f = one_database("replicas = ['file:///r']\npoll-interval = '10ms'");
    let o = options(&f.databases[0], &Flags::default()).unwrap();
    assert_eq!(o.poll_interval, Duration::from_millis(10));
}

/// Regression: a zero or negative `puts-per-second` silently meant "no pacing at all".
#[test]
fn a_zero_or_negative_puts_per_second_is_refused() {
    for v in ["0.0", "-1.0", "nan", "inf"] {
        let e = refused(&format!("puts-per-second = {v}"), &Flags::default());
        assert!(
            e.contains("puts-per-second = ") && e.contains("above 0"),
            "{v}: {e}"
        );
    }
    for v in [0.0, -2.5, f64::NAN] {
        let flags = Flags {
            puts_per_second: Some(v),
            ..Flags::default()
        };
        let e = refused("", &flags);
        assert!(e.contains(&format!("--puts-per-second {v}")), "{e}");
    }
    let e = refused("put-burst = 0.5", &Flags::default());
    assert!(
        e.contains("put-burst = 0.5") && e.contains("1 or more"),
        "{e}"
    );
}

#[test]
fn switching_to_wal_is_off_unless_the_flag_or_the_file_says_so() {
    let f = one_database("replicas = ['file:///r']");
    assert!(
        !options(&f.databases[0], &Flags::default())
            .unwrap()
            .switch_to_wal
    );
    let flags = Flags {
        switch_to_wal: true,
        ..Flags::default()
    };
    assert!(options(&f.databases[0], &flags).unwrap().switch_to_wal);
    let f = one_database("replicas = ['file:///r']\nswitch-to-wal = true");
    assert!(
        options(&f.databases[0], &Flags::default())
            .unwrap()
            .switch_to_wal
    );
}

/// Regression: a database listed twice started two replicators on it, and the second said that
/// "another lifeboat" (its own process) held it.
#[test]
fn a_database_listed_twice_is_refused_naming_both_entries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = '{d}/app.db'\nreplicas = ['file://{d}/a']\n\
             [[databases]]\npath = '{d}/./app.db'\nreplicas = ['file://{d}/b']\n"
        ),
    )
    .unwrap();
    let e = format!("{:#}", read_file(&cfg).unwrap_err());
    assert!(
        e.contains("listed twice") && e.contains(&format!("{d}/./app.db")),
        "{e}"
    );
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = '{d}/t/acme.db'\nreplicas = ['file://{d}/a']\n\
             [[database-folders]]\npath = '{d}/t'\nreplicas = ['file://{d}/b']\n"
        ),
    )
    .unwrap();
    let e = format!("{:#}", read_file(&cfg).unwrap_err());
    assert!(e.contains("also in the database folder"), "{e}");
    // A pattern that leaves it out is fine.
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = '{d}/t/acme.db'\nreplicas = ['file://{d}/a']\n\
             [[database-folders]]\npath = '{d}/t/*.sqlite'\nreplicas = ['file://{d}/b']\n"
        ),
    )
    .unwrap();
    read_file(&cfg).unwrap();
}

/// A valid configuration file to mutate.
const SAMPLE: &str = "[[databases]]\npath = \"/data/app.db\"\nreplicas = [\"file:///r\", \
     { url = \"s3://b/p\", retention = \"30d\" }]\nputs-per-second = 2.0\npoll-interval = \"1s\"\n\
     dirs = [\"/data/up\"]\n[[database-folders]]\npath = \"/data/t/*.db\"\nreplicas = [\"s3://b/${BUCKET}\"]\n";

/// Whatever the file says, reading it gives an error or settings that were checked.
fn read_any(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
    let Ok(text) = expand_env(text, env) else {
        return Ok(());
    };
    let Ok(file) = toml::from_str::<File>(&text) else {
        return Ok(());
    };
    let _ = check_listed_once(&file);
    for d in file.databases.iter().chain(&file.folders) {
        let _ = dir_specs(&d.dirs);
        if let Ok(o) = options(d, &Flags::default()) {
            proptest::prop_assert!(o.poll_interval >= MIN_POLL_INTERVAL);
            proptest::prop_assert!(o.puts_per_second > 0.0 && o.puts_per_second.is_finite());
        }
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Untrusted configuration never panics: a valid file with characters changed, cut short
    /// or extended.
    #[test]
    fn a_mutated_configuration_is_an_error_or_checked_settings(
        writes in proptest::collection::vec((proptest::prelude::any::<usize>(), "[ -~\n]"), 0..5),
        cut in proptest::option::of(proptest::prelude::any::<usize>()),
        tail in "[ -~\n]{0,20}",
    ) {
        let mut b = SAMPLE.as_bytes().to_vec();
        for (at, c) in writes {
            let i = at % b.len();
            b[i] = c.as_bytes()[0];
        }
        if let Some(n) = cut {
            b.truncate(n % (b.len() + 1));
        }
        b.extend_from_slice(tail.as_bytes());
        read_any(&String::from_utf8(b).unwrap())?;
    }

    #[test]
    fn any_text_never_panics(text in "\\PC{0,200}") {
        read_any(&text)?;
    }

    /// Setting values of any kind, in the places users type them.
    #[test]
    fn any_setting_value_is_an_error_or_checked(
        pps in "[-0-9.a-z]{0,6}",
        poll in "[-0-9a-z\" ]{0,8}",
    ) {
        read_any(&format!(
            "[[databases]]\npath='x'\nreplicas=['file:///r']\nputs-per-second = {pps}\npoll-interval = {poll}\n"
        ))?;
    }
}
