//! The behaviour every [`ReplicaClient`] must show. Backends call [`check`] from their tests,
//! against a real server where there is one.
//!
//! Compiled only with the `conformance` feature, which the backends' dev-dependencies turn on:
//! the suite is test code, not part of the library a binary links.

use bytes::Bytes;

use crate::{ETag, Error, PutOutcome, ReplicaClient};

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
    client
        .abort_stale_uploads(std::time::Duration::ZERO)
        .await
        .expect("cleaning up interrupted writes succeeds");
    assert_eq!(
        client.list(&p).await.unwrap().len(),
        6,
        "cleaning up interrupted writes never touches an object"
    );

    // Delete.
    client.delete(&k("dir/b")).await.unwrap();
    assert!(matches!(
        client.get(&k("dir/b")).await,
        Err(Error::NotFound { .. })
    ));
    // Several at once: one answer per key, in order; a missing key is deleted all the same;
    // nothing outside the list is touched.
    assert!(client.delete_many(&[]).await.is_empty());
    let many = [k("dir/a"), k("missing"), k("dir/bin"), k("dir/b")];
    let answers = client.delete_many(&many).await;
    assert_eq!(
        answers.len(),
        many.len(),
        "delete_many answers for each key"
    );
    for (key, r) in many.iter().zip(&answers) {
        assert!(r.is_ok(), "delete_many of {key}: {r:?}");
    }
    let keys: Vec<_> = client
        .list(&p)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        keys,
        [k("dir/file"), k("dirx"), k("empty")],
        "delete_many deletes exactly the keys it is given"
    );
    for o in client.list(&p).await.unwrap() {
        client.delete(&o.key).await.unwrap();
    }
    assert!(client.list(&p).await.unwrap().is_empty());

    check_conditional(client, &p).await;
    check_races(client, &p).await;
    for o in client.list(&p).await.unwrap() {
        client.delete(&o.key).await.unwrap();
    }
}

fn is_precondition<T: std::fmt::Debug>(r: &crate::Result<T>) -> bool {
    matches!(r, Err(Error::Precondition { .. }))
}

/// The conditional writes a lease is built on, one client at a time.
async fn check_conditional(client: &dyn ReplicaClient, p: &str) {
    let key = format!("{p}lease");
    assert!(
        matches!(
            client.get_versioned(&key).await,
            Err(Error::NotFound { .. })
        ),
        "get_versioned of a missing key must be NotFound"
    );
    let bogus = ETag::new("\"0123456789abcdef0123456789abcdef\"");
    assert!(
        is_precondition(&client.put_if_match(&key, "x".into(), &bogus).await),
        "put_if_match on a missing key must be Precondition"
    );
    client
        .delete_if_match(&key, &bogus)
        .await
        .expect("delete_if_match of a missing key succeeds");

    let v1 = client
        .put_if_absent(&key, "holder a, 1".into())
        .await
        .unwrap();
    let (data, tag) = client.get_versioned(&key).await.unwrap();
    assert_eq!((&data[..], &tag), (&b"holder a, 1"[..], &v1));
    assert_eq!(
        client
            .put_if_absent(&key, "holder a, 1".into())
            .await
            .unwrap(),
        v1,
        "put_if_absent of the same bytes is a retry whose answer was lost: it returns the version"
    );
    assert!(
        is_precondition(&client.put_if_absent(&key, "holder b, 1".into()).await),
        "put_if_absent of other bytes over an existing object must be Precondition"
    );

    let v2 = client
        .put_if_match(&key, "holder a, 2".into(), &v1)
        .await
        .unwrap();
    assert_ne!(v1, v2, "a new write has a new version");
    assert_eq!(client.get_versioned(&key).await.unwrap().1, v2);
    assert_eq!(
        client
            .put_if_match(&key, "holder a, 2".into(), &v1)
            .await
            .unwrap(),
        v2,
        "a retried put_if_match that finds its own bytes returns their version"
    );
    assert!(
        is_precondition(&client.put_if_match(&key, "holder b, 2".into(), &v1).await),
        "put_if_match with an old version must be Precondition"
    );
    assert_eq!(&client.get(&key).await.unwrap()[..], b"holder a, 2");

    // A write of the same bytes as an earlier version still moves the version on, so that an
    // old version is refused.
    let v3 = client
        .put_if_match(&key, "holder a, 3".into(), &v2)
        .await
        .unwrap();
    assert!(
        is_precondition(&client.delete_if_match(&key, &v2).await),
        "delete_if_match with an old version must be Precondition"
    );
    assert_eq!(&client.get(&key).await.unwrap()[..], b"holder a, 3");
    client.delete_if_match(&key, &v3).await.unwrap();
    assert!(matches!(
        client.get(&key).await,
        Err(Error::NotFound { .. })
    ));
    client
        .delete_if_match(&key, &v3)
        .await
        .expect("a retried delete_if_match succeeds");
    let v4 = client
        .put_if_absent(&key, "holder b, 1".into())
        .await
        .unwrap();
    assert_eq!(client.get_versioned(&key).await.unwrap().1, v4);
    client.delete_if_match(&key, &v4).await.unwrap();
}

/// Several writers racing on one key: exactly one wins each round, and the object holds the
/// winner's bytes.
async fn check_races(client: &dyn ReplicaClient, p: &str) {
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let key = format!("{p}race-{round}");
        let w = |i: usize| Bytes::from(format!("writer {i}, round {round}, create"));
        let r = tokio::join!(
            client.put_if_absent(&key, w(0)),
            client.put_if_absent(&key, w(1)),
            client.put_if_absent(&key, w(2)),
            client.put_if_absent(&key, w(3)),
        );
        let r = [r.0, r.1, r.2, r.3];
        let winners: Vec<usize> = (0..4).filter(|&i| r[i].is_ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of four racing put_if_absent must win: {r:?}"
        );
        assert!(
            r.iter().filter(|x| x.is_err()).all(is_precondition),
            "round {round}: the losers get Precondition: {r:?}"
        );
        let (data, tag) = client.get_versioned(&key).await.unwrap();
        assert_eq!(data, w(winners[0]), "round {round}: the winner's bytes");
        assert_eq!(&tag, r[winners[0]].as_ref().unwrap());

        let w = |i: usize| Bytes::from(format!("writer {i}, round {round}, swap"));
        let r = tokio::join!(
            client.put_if_match(&key, w(0), &tag),
            client.put_if_match(&key, w(1), &tag),
            client.put_if_match(&key, w(2), &tag),
            client.delete_if_match(&key, &tag),
        );
        let puts = [r.0, r.1, r.2];
        let won = puts.iter().filter(|x| x.is_ok()).count() + usize::from(r.3.is_ok());
        assert_eq!(
            won, 1,
            "round {round}: exactly one of three put_if_match and one delete_if_match on one \
             version must win: {puts:?} {:?}",
            r.3
        );
        match puts.iter().position(|x| x.is_ok()) {
            Some(i) => {
                let (data, now) = client.get_versioned(&key).await.unwrap();
                assert_eq!(data, w(i), "round {round}: the winner's bytes");
                assert_eq!(&now, puts[i].as_ref().unwrap());
                client.delete_if_match(&key, &now).await.unwrap();
            }
            None => assert!(
                matches!(client.get(&key).await, Err(Error::NotFound { .. })),
                "round {round}: the delete won"
            ),
        }
    }
}
