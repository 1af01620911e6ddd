//! Several nodes: the controller places volumes by topology (preferred
//! first, requisite as the limit), goes on to the next node when one has no
//! room, reports capacity per node, and routes every later call to the node
//! a volume lives on.

use pool_csi_e2e::{req, require, Driver, Options};
use pool_csi_proto::csi;
use tonic::Code;

fn topo(n: &str) -> csi::Topology {
    csi::Topology {
        segments: [("pool-csi.io/node".to_string(), n.to_string())].into(),
    }
}

/// The driver with nodes node-1 and node-2, each with pools scratch and
/// other.
async fn two_nodes_two_pools() -> Driver {
    Driver::start(Options {
        extra_nodes: vec![("node-2".into(), 1 << 30)],
        extra_pools: "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: other }\nspec: { type: dir, target: { path: \"{dir}/other\" }, autoBuild: true }\n".into(),
        ..Default::default()
    })
    .await
}

/// A 1 MiB volume `name` in `pool`, required on `node`.
fn on(name: &str, pool: &str, node: &str) -> csi::CreateVolumeRequest {
    let mut r = req::create(name, req::MIB, &[("pool", pool)]);
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![topo(node)],
        preferred: vec![],
    });
    r
}

fn placed(v: &csi::Volume) -> String {
    v.accessible_topology[0].segments["pool-csi.io/node"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_go_where_topology_and_room_allow() {
    require!(false);
    let d = Driver::start(Options {
        tmpfs_bytes: Some(64 << 20),
        extra_nodes: vec![("node-2".into(), 1 << 30)],
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let with_topology = |name: &str, bytes: i64, requisite: &[&str], preferred: &[&str]| {
        let mut r = req::create(name, bytes, &[]);
        r.accessibility_requirements = Some(csi::TopologyRequirement {
            requisite: requisite.iter().map(|n| topo(n)).collect(),
            preferred: preferred.iter().map(|n| topo(n)).collect(),
        });
        r
    };

    let a = c
        .controller
        .create_volume(with_topology("on-two", 8 << 20, &["node-2"], &["node-2"]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(placed(&a), "node-2");
    let b = c
        .controller
        .create_volume(with_topology(
            "prefers-one",
            8 << 20,
            &["node-1", "node-2"],
            &["node-1"],
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(placed(&b), "node-1", "the preferred node has room");
    // node-1's pool is 64 MiB: a 200 MiB volume that prefers it goes to node-2.
    let big = c
        .controller
        .create_volume(with_topology(
            "too-big-for-one",
            200 << 20,
            &["node-1", "node-2"],
            &["node-1"],
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        placed(&big),
        "node-2",
        "no room on node-1, so the next allowed node"
    );
    let e = c
        .controller
        .create_volume(with_topology(
            "only-one",
            200 << 20,
            &["node-1"],
            &["node-1"],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("node-1"), "{}", e.message());

    // Capacity per node segment.
    let cap = |n: &'static str| {
        let mut c = c.clone();
        async move {
            let r = csi::GetCapacityRequest {
                accessible_topology: Some(topo(n)),
                parameters: [("pool".to_string(), "scratch".to_string())].into(),
                ..Default::default()
            };
            c.controller
                .get_capacity(r)
                .await
                .unwrap()
                .into_inner()
                .available_capacity
        }
    };
    let (one, two) = (cap("node-1").await, cap("node-2").await);
    // Sparse volumes take no space until written: each node reports its own pool.
    assert!(
        one <= 64 << 20 && one > 32 << 20 && two > 700 << 20,
        "node-1 {one}, node-2 {two}"
    );

    // Listing spans both nodes; a clone stays with its source; deletes route right.
    let all = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<String> = all
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().volume_id.clone())
        .collect();
    ids.sort();
    let mut want = vec![
        a.volume_id.clone(),
        b.volume_id.clone(),
        big.volume_id.clone(),
    ];
    want.sort();
    assert_eq!(ids, want);
    let clone = c
        .controller
        .create_volume(req::clone_of("clone-of-two", 8 << 20, &a.volume_id))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(placed(&clone), "node-2");
    for id in [&a.volume_id, &b.volume_id, &big.volume_id, &clone.volume_id] {
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete");
    }
    let empty = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(empty.entries.is_empty());
}

/// ListVolumes over two nodes and two pools, two entries a page, while
/// volumes come and go between pages: ids come in order, none twice, every
/// volume that lived through the walk is seen, one made behind the token is
/// not, one made ahead of it is. Each node answers only its next page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_listing_over_nodes_and_pools_survives_changes_between_pages() {
    require!(false);
    let d = two_nodes_two_pools().await;
    let mut c = d.clients().await;
    let make = on;
    let mut ids = Vec::new();
    for (i, (pool, node)) in [
        ("scratch", "node-1"),
        ("scratch", "node-2"),
        ("other", "node-1"),
    ]
    .into_iter()
    .cycle()
    .take(9)
    .enumerate()
    {
        let v = c
            .controller
            .create_volume(make(&format!("v{i}"), pool, node))
            .await
            .unwrap_or_else(|e| panic!("v{i} in {pool} on {node}: {e:?}"))
            .into_inner()
            .volume
            .unwrap();
        ids.push(v.volume_id);
    }
    let (mut seen, mut token, mut pages) = (Vec::<String>::new(), String::new(), 0);
    let (mut behind, mut ahead) = (None, None);
    loop {
        let page = c
            .controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        pages += 1;
        if pages == 2 {
            // Between pages: one volume seen goes, one made behind the
            // token (sorts before it) and one ahead of it.
            let gone = seen[0].clone();
            c.controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: gone,
                    ..Default::default()
                })
                .await
                .unwrap();
            let b = c
                .controller
                .create_volume(make("a-behind", "other", "node-1"))
                .await
                .unwrap();
            let a = c
                .controller
                .create_volume(make("z-ahead", "scratch", "node-2"))
                .await
                .unwrap();
            behind = Some(b.into_inner().volume.unwrap().volume_id);
            ahead = Some(a.into_inner().volume.unwrap().volume_id);
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in id order, none twice");
    for id in &ids {
        assert!(seen.contains(id), "{id} missing from {seen:?}");
    }
    let (behind, ahead) = (behind.unwrap(), ahead.unwrap());
    assert!(
        !seen.contains(&behind),
        "{behind}, made behind the token, is not listed"
    );
    assert!(
        seen.contains(&ahead),
        "{ahead} made ahead of the token is listed"
    );
    assert!(pages >= 5, "{pages} pages of two for ten volumes");
}

/// ListSnapshots over two nodes and two pools, two entries a page, while
/// snapshots come and go between pages (as for volumes above); the filters
/// by snapshot id and by source volume ask only the node that can hold
/// them; a snapshot name is unique across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_snapshot_listing_over_nodes_and_pools_survives_changes_between_pages() {
    require!(false);
    let d = two_nodes_two_pools().await;
    let mut c = d.clients().await;
    let mut sources = Vec::new();
    for (i, (pool, node)) in [
        ("scratch", "node-1"),
        ("scratch", "node-2"),
        ("other", "node-1"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = on(&format!("v{i}"), pool, node);
        let v = c.controller.create_volume(r).await.unwrap().into_inner();
        sources.push(v.volume.unwrap().volume_id);
    }
    let mut ids = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        for j in 0..3 {
            let s = c
                .controller
                .create_snapshot(req::snapshot(&format!("s{i}-{j}"), source))
                .await
                .unwrap_or_else(|e| panic!("s{i}-{j} of {source}: {e:?}"))
                .into_inner();
            ids.push(s.snapshot.unwrap().snapshot_id);
        }
    }
    let list = |snapshot_id: &str, source_volume_id: &str, max_entries: i32, token: &str| {
        csi::ListSnapshotsRequest {
            max_entries,
            starting_token: token.into(),
            source_volume_id: source_volume_id.into(),
            snapshot_id: snapshot_id.into(),
            ..Default::default()
        }
    };
    let ids_of = |r: csi::ListSnapshotsResponse| -> (Vec<String>, String) {
        let ids = r.entries.into_iter();
        let ids = ids.map(|e| e.snapshot.unwrap().snapshot_id).collect();
        (ids, r.next_token)
    };

    let (mut seen, mut token, mut pages) = (Vec::<String>::new(), String::new(), 0);
    let (mut behind, mut ahead) = (String::new(), String::new());
    loop {
        let page = c.controller.list_snapshots(list("", "", 2, &token)).await;
        let (page, next) = ids_of(page.unwrap().into_inner());
        assert!(page.len() <= 2, "{page:?}");
        seen.extend(page);
        pages += 1;
        if pages == 2 {
            // One seen goes; one is made behind the token (pool "other"
            // sorts before "scratch") and one ahead of it.
            let gone = seen[0].clone();
            let del = csi::DeleteSnapshotRequest {
                snapshot_id: gone,
                ..Default::default()
            };
            c.controller.delete_snapshot(del).await.unwrap();
            let make = |name: &str, source: &str| req::snapshot(name, source);
            let b = c
                .controller
                .create_snapshot(make("zz-behind", &sources[2]))
                .await;
            let a = c
                .controller
                .create_snapshot(make("zz-ahead", &sources[1]))
                .await;
            behind = b.unwrap().into_inner().snapshot.unwrap().snapshot_id;
            ahead = a.unwrap().into_inner().snapshot.unwrap().snapshot_id;
        }
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in id order, none twice");
    for id in &ids {
        assert!(seen.contains(id), "{id} missing from {seen:?}");
    }
    assert!(
        !seen.contains(&behind),
        "{behind}, made behind the token, is not listed"
    );
    assert!(
        seen.contains(&ahead),
        "{ahead}, made ahead of the token, is listed"
    );
    assert!(pages >= 5, "{pages} pages of two for ten snapshots");

    // Of one source volume (on node-2), in pages of two.
    let of_v1 = c
        .controller
        .list_snapshots(list("", &sources[1], 2, ""))
        .await;
    let (first, next) = ids_of(of_v1.unwrap().into_inner());
    let rest = c
        .controller
        .list_snapshots(list("", &sources[1], 2, &next))
        .await;
    let (rest, last) = ids_of(rest.unwrap().into_inner());
    assert_eq!(
        (first.len(), rest.len(), last.as_str()),
        (2, 2, ""),
        "{first:?} {rest:?}"
    );
    assert!(first
        .iter()
        .chain(&rest)
        .all(|id| id.contains(":scratch:node-2:")));

    // By id: the one snapshot; an id naming an unknown node or a missing
    // snapshot, or no id at all, lists nothing.
    let one = c.controller.list_snapshots(list(&ids[4], "", 0, "")).await;
    assert_eq!(ids_of(one.unwrap().into_inner()).0, [ids[4].clone()]);
    for missing in [
        ids[4].replace(":node-2:", ":node-9:"),
        ids[4].replace("s1-1", "s1-9"),
        "not-an-id".to_string(),
    ] {
        let none = c.controller.list_snapshots(list(&missing, "", 0, "")).await;
        assert!(ids_of(none.unwrap().into_inner()).0.is_empty(), "{missing}");
    }
    let got = c
        .controller
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: ids[4].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.snapshot.unwrap().source_volume_id, sources[1]);
    let gone = c
        .controller
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: ids[4].replace("s1-1", "s1-9"),
            ..Default::default()
        })
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);

    // A name taken on node-2 is taken for a volume on node-1 too.
    let again = c
        .controller
        .create_snapshot(req::snapshot("s1-0", &sources[0]))
        .await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
}
