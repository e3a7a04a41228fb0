//! The behaviour every [`ReplicaClient`] must show. Backends call [`check`] from their tests,
//! against a real server where there is one.

use bytes::Bytes;

use crate::{Error, PutOutcome, ReplicaClient};

/// Runs every check against `client`, under a fresh random prefix, and panics on the first
/// failure with a message that names it.
pub async fn check(client: &dyn ReplicaClient) {
    let p = format!("conformance-{:016x}/", rand::random::<u64>());
    let k = |s: &str| format!("{p}{s}");

    // Missing objects.
    assert!(
        matches!(client.get(&k("missing")).await, Err(Error::NotFound { .. })),
        "get of a missing key must be NotFound"
    );
    assert!(
        client.list(&p).await.unwrap().is_empty(),
        "fresh prefix lists empty"
    );
    client
        .delete(&k("missing"))
        .await
        .expect("deleting a missing key succeeds");

    // Create-only writes.
    let a = Bytes::from_static(b"first version");
    assert_eq!(
        client.put(&k("dir/a"), a.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        client.put(&k("dir/a"), a.clone()).await.unwrap(),
        PutOutcome::AlreadyExisted,
        "same bytes again is a retried write"
    );
    assert!(
        matches!(
            client.put(&k("dir/a"), Bytes::from_static(b"other")).await,
            Err(Error::Conflict { .. })
        ),
        "other bytes must be a Conflict"
    );
    assert_eq!(
        client.get(&k("dir/a")).await.unwrap(),
        a,
        "conflict must not overwrite"
    );

    // Ranges.
    assert_eq!(
        &client.get_range(&k("dir/a"), 6..13).await.unwrap()[..],
        b"version"
    );
    assert_eq!(
        &client.get_range(&k("dir/a"), 6..100).await.unwrap()[..],
        b"version",
        "a range past the end is cut short"
    );

    // Empty objects and binary content.
    client.put(&k("empty"), Bytes::new()).await.unwrap();
    assert!(client.get(&k("empty")).await.unwrap().is_empty());
    let bin: Bytes = (0..=255u8).cycle().take(300_000).collect::<Vec<_>>().into();
    client.put(&k("dir/bin"), bin.clone()).await.unwrap();
    assert_eq!(client.get(&k("dir/bin")).await.unwrap(), bin);

    // Files in and out.
    let dir = std::env::temp_dir().join(format!("lifeboat-conf-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src");
    std::fs::write(&src, &bin).unwrap();
    assert_eq!(
        client.put_file(&k("dir/file"), &src).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        client.put_file(&k("dir/file"), &src).await.unwrap(),
        PutOutcome::AlreadyExisted
    );
    std::fs::write(&src, b"different").unwrap();
    assert!(matches!(
        client.put_file(&k("dir/file"), &src).await,
        Err(Error::Conflict { .. })
    ));
    let dest = dir.join("dest");
    assert_eq!(
        client.get_to_file(&k("dir/file"), &dest).await.unwrap(),
        bin.len() as u64
    );
    assert_eq!(std::fs::read(&dest).unwrap(), bin);
    std::fs::remove_dir_all(&dir).unwrap();

    // Listing: sorted, recursive, prefix-filtered, with sizes.
    client
        .put(&k("dir/b"), Bytes::from_static(b"bb"))
        .await
        .unwrap();
    client
        .put(&k("dirx"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let listed = client.list(&k("dir/")).await.unwrap();
    let keys: Vec<_> = listed.iter().map(|o| o.key.clone()).collect();
    assert_eq!(
        keys,
        [k("dir/a"), k("dir/b"), k("dir/bin"), k("dir/file")],
        "list is sorted and limited to the prefix"
    );
    assert_eq!(listed[1].size, 2);
    assert_eq!(client.list(&p).await.unwrap().len(), 6);

    // Delete.
    client.delete(&k("dir/b")).await.unwrap();
    assert!(matches!(
        client.get(&k("dir/b")).await,
        Err(Error::NotFound { .. })
    ));
    for o in client.list(&p).await.unwrap() {
        client.delete(&o.key).await.unwrap();
    }
    assert!(client.list(&p).await.unwrap().is_empty());
}
