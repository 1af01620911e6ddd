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
