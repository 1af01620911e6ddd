//! Fencing shared LUNs with SCSI-3 persistent reservations, against a real
//! tgtd: the iscsi pool `san` on two nodes (in this process, their LUN
//! claims in the fake cluster), each node with its own iSCSI session — its
//! own initiator, an I_T nexus — to the target, running the real sg_persist
//! and sg_raw through it. Not real here: the kernel's iSCSI login and block
//! device (e2e/shim stands in for the SG_IO path; a node's `device` is a
//! file standing for /dev/sdX).

use pool_csi_common::{PoolDefinition, PoolType};
use pool_csi_e2e::{
    sg_iscsi::{Session, Shim},
    tgt::Target,
};
use pool_csi_node::{
    config::ClusterAccess,
    error::{Error, Result},
    exec::{real::RealRunner, Cmd, CommandRunner, ExecError, Output},
    pools::{
        lun::{LunPool, LunSource},
        lun_claims::Claim,
        lun_sources::IscsiSource,
        CreateRequest, Pool,
    },
    tools::{
        persist::{node_key, Reservations, SgPersist},
        scsi::Lun,
    },
    Config,
};
use pool_csi_testkit::fake_api::FakeApi;
use std::{
    collections::{hash_map::Entry, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

const IQN: &str = "iqn.2026-11.io.pool-csi:fenced";

/// Runs sg_persist through the node's session: the device it names (last
/// in argv) has its session's socket beside it (`<device>.sock`).
struct ThroughSession {
    lib: PathBuf,
}

impl ThroughSession {
    async fn run_on(&self, cmd: &Cmd, device: &Path) -> std::result::Result<Output, ExecError> {
        let cmd = cmd
            .clone()
            .env("LD_PRELOAD", self.lib.to_str().unwrap())
            .env("SG_ISCSI_SOCKET", &format!("{}.sock", device.display()));
        RealRunner::new(Vec::new()).run(&cmd).await
    }
}

#[tonic::async_trait]
impl CommandRunner for ThroughSession {
    async fn run(&self, cmd: &Cmd) -> std::result::Result<Output, ExecError> {
        let device = PathBuf::from(cmd.args.last().unwrap());
        self.run_on(cmd, &device).await
    }
}

/// The iscsi source of one node: the inventory from the target (libiscsi,
/// real), a LUN's "device" a file here whose session is this node's.
struct Node {
    name: String,
    dir: PathBuf,
    url: String,
    shim: Arc<Shim>,
    sessions: Mutex<HashMap<u32, Session>>,
    inventory: IscsiSource,
    runner: ThroughSession,
}

impl Node {
    fn device(&self, lun: u32) -> PathBuf {
        self.dir.join(format!("lun{lun}"))
    }

    /// WRITE(10) of one block through this node's session: sg_raw's exit
    /// status (0 written, 24 reservation conflict); a unit attention
    /// (told once after a pre-emption) is retried, as the kernel does.
    async fn write(&self, lun: u32) -> i32 {
        let device = self.connect(lun).unwrap();
        let block = self.dir.join("block");
        std::fs::write(&block, vec![0x5a; 512]).unwrap();
        let cmd = Cmd::new("sg_raw").args(["-s", "512", "-i", block.to_str().unwrap()]);
        let cmd = cmd.arg(&device);
        let cmd = cmd.args(["2a", "0", "0", "0", "0", "0", "0", "0", "1", "0"]);
        for _ in 0..2 {
            let out = self.runner.run_on(&cmd, &device).await.unwrap();
            if out.status != 6 {
                return out.status;
            }
        }
        6
    }

    /// The registered keys, as this node reads them.
    async fn keys(&self, lun: u32) -> Vec<u64> {
        let device = self.connect(lun).unwrap();
        SgPersist::disk(&self.runner, device).keys().await.unwrap()
    }

    /// This node's session to LUN `lun` (logged in at first use) and the
    /// file that stands for its block device.
    fn connect(&self, lun: u32) -> std::result::Result<PathBuf, String> {
        let device = self.device(lun);
        let mut sessions = self.sessions.lock().unwrap();
        if let Entry::Vacant(e) = sessions.entry(lun) {
            let socket = PathBuf::from(format!("{}.sock", device.display()));
            let _ = std::fs::remove_file(&socket);
            let initiator = format!("iqn.2026-11.io.pool-csi:{}", self.name);
            let url = format!("{}/{lun}", self.url);
            e.insert(self.shim.session(&socket, &url, &initiator)?);
        }
        std::fs::File::create(&device).unwrap();
        Ok(device)
    }
}

/// The pool's handle on its [`Node`] (the test keeps another).
struct Source(Arc<Node>);

impl std::ops::Deref for Source {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.0
    }
}

#[tonic::async_trait]
impl LunSource for Source {
    fn pool_type(&self) -> PoolType {
        PoolType::Iscsi
    }
    fn origin(&self) -> String {
        self.inventory.origin()
    }
    async fn inventory(&self) -> Result<Vec<Lun>> {
        self.inventory.inventory().await
    }
    async fn device(&self, c: &Claim) -> Result<PathBuf> {
        self.connect(c.lun).map_err(Error::Precondition)
    }
    /// The node's logout: its sessions end.
    async fn disconnect(&self) -> Result<()> {
        self.sessions.lock().unwrap().clear();
        Ok(())
    }
    fn reservations<'a>(&'a self, device: &Path) -> Box<dyn Reservations + 'a> {
        Box::new(SgPersist::disk(&self.runner, device.to_path_buf()))
    }
}

struct Bed {
    target: Target,
    _fake: FakeApi,
    a: (LunPool, Arc<Node>),
    b: (LunPool, Arc<Node>),
    _dir: tempfile::TempDir,
}

/// tgtd with one 8 MiB LUN; the pool `san` (with `extra` spec lines) on
/// node-a and node-b. None when a requirement is missing (skipped, saying so).
async fn bed(extra: &str) -> Option<Bed> {
    for t in ["tgtd", "iscsi-ls", "sg_persist", "sg_raw"] {
        if pool_csi_e2e::which(t).is_none() {
            pool_csi_e2e::skip(t, "needs tgt, libiscsi-bin and sg3-utils; run dev/setup");
            return None;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let shim = match Shim::build(dir.path()) {
        Ok(s) => Arc::new(s),
        Err(why) => {
            pool_csi_e2e::skip("libiscsi-dev", &why);
            return None;
        }
    };
    let target = Target::start(dir.path());
    target.target("1", IQN);
    target.lun(dir.path(), "1", "1", 8);
    let fake = FakeApi::new();
    let yaml = format!(
        "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: san }}\nspec:\n  type: iscsi\n  source: {{ host: \"127.0.0.1:{}\", device: {IQN} }}\n{extra}",
        target.port
    );
    let def = PoolDefinition::parse_documents(&yaml, "t")
        .unwrap()
        .remove(0);
    let node = |name: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let mut cfg = Config::local(name, home.join("state"));
        cfg.cluster = Some(ClusterAccess {
            client: fake.client(),
            namespace: "pool-csi".into(),
        });
        let node = Arc::new(Node {
            name: name.into(),
            dir: home,
            url: format!("iscsi://127.0.0.1:{}/{IQN}", target.port),
            shim: shim.clone(),
            sessions: Mutex::default(),
            inventory: IscsiSource::new(&def, &cfg, Arc::new(RealRunner::new(Vec::new()))),
            runner: ThroughSession {
                lib: shim.lib.clone(),
            },
        });
        (
            LunPool::new(&def, &cfg, Box::new(Source(node.clone()))),
            node,
        )
    };
    let (a, b) = (node("node-a"), node("node-b"));
    a.0.start().await.unwrap();
    b.0.start().await.unwrap();
    Some(Bed {
        target,
        _fake: fake,
        a,
        b,
        _dir: dir,
    })
}

#[tokio::test]
async fn a_volume_moves_off_a_lost_node_only_after_it_is_fenced() {
    let Some(bed) = bed("").await else { return };
    let ((a, na), (b, nb)) = (&bed.a, &bed.b);
    let (ka, kb) = (node_key("node-a"), node_key("node-b"));
    a.create_volume(&CreateRequest::sized("v", 1))
        .await
        .unwrap();
    a.publish("v", "node-a").await.unwrap();
    a.attach_source("v").await.unwrap();
    // node-a took the LUN: only it is registered, and only it can write.
    assert_eq!(nb.keys(1).await, vec![ka]);
    assert_eq!(na.write(1).await, 0);
    assert_eq!(nb.write(1).await, 24, "an unregistered node is refused");

    // node-a is lost; Kubernetes' force-detach reaches node-b, which
    // pre-empts node-a's key before it releases the volume, and logs out
    // again (it uses nothing of the pool).
    nb.sessions.lock().unwrap().clear();
    b.unpublish("v", "node-a").await.unwrap();
    assert!(nb.sessions.lock().unwrap().is_empty(), "node-b logged out");
    assert_eq!(nb.keys(1).await, vec![kb]);
    assert_eq!(na.write(1).await, 24, "the lost node cannot write any more");
    b.publish("v", "node-b").await.unwrap();
    b.attach_source("v").await.unwrap();
    assert_eq!(nb.write(1).await, 0);
    assert_eq!(na.write(1).await, 24);
    let e = a.attach_source("v").await.unwrap_err().to_string();
    assert!(e.contains("published on node node-b"), "{e}");
    assert!(a.status(false).await.message.is_empty());

    // Back on node-a later: it takes the LUN from node-b in turn.
    b.detached("v").await.unwrap();
    b.unpublish("v", "node-b").await.unwrap();
    a.publish("v", "node-a").await.unwrap();
    a.attach_source("v").await.unwrap();
    assert_eq!(na.keys(1).await, vec![ka]);
    assert_eq!(na.write(1).await, 0);
    assert_eq!(nb.write(1).await, 24);
    a.detached("v").await.unwrap();
    a.unpublish("v", "node-a").await.unwrap();

    // A wipe on delete writes from the deleting node: it takes the LUN first.
    b.delete_volume("v", true).await.unwrap();
    assert_eq!(nb.keys(1).await, vec![kb]);
}

#[tokio::test]
async fn a_lost_node_s_volume_is_not_released_when_fencing_fails() {
    let Some(bed) = bed("").await else { return };
    let ((a, na), (b, _)) = (&bed.a, &bed.b);
    a.create_volume(&CreateRequest::sized("v", 1))
        .await
        .unwrap();
    a.publish("v", "node-a").await.unwrap();
    a.attach_source("v").await.unwrap();
    // The target admits node-a only now: node-b cannot log in to fence,
    // and the volume stays where it is.
    let t = &bed.target;
    t.adm(&[
        "--op", "unbind", "--mode", "target", "--tid", "1", "-I", "ALL",
    ]);
    t.adm(&[
        "--op",
        "bind",
        "--mode",
        "target",
        "--tid",
        "1",
        "--initiator-name",
        "iqn.2026-11.io.pool-csi:node-a",
    ]);
    let e = b.unpublish("v", "node-a").await.unwrap_err();
    // UNAVAILABLE: the controller asks another node of the pool next.
    assert!(matches!(e, Error::FenceUnreachable { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("stays published on node node-a"), "{e}");
    assert!(e.contains("cannot be reached from node node-b"), "{e}");
    let e = b.publish("v", "node-b").await.unwrap_err().to_string();
    assert!(e.contains("published on node node-a"), "{e}");
    assert_eq!(
        na.write(1).await,
        0,
        "node-a was not fenced, and still writes"
    );
}

#[tokio::test]
async fn with_fencing_none_a_volume_moves_unfenced() {
    let Some(bed) = bed("  fencing: none\n").await else {
        return;
    };
    let ((a, na), (b, nb)) = (&bed.a, &bed.b);
    a.create_volume(&CreateRequest::sized("v", 1))
        .await
        .unwrap();
    a.publish("v", "node-a").await.unwrap();
    a.attach_source("v").await.unwrap();
    b.unpublish("v", "node-a").await.unwrap();
    b.publish("v", "node-b").await.unwrap();
    b.attach_source("v").await.unwrap();
    // No reservation was ever taken: both nodes can write.
    assert_eq!(nb.keys(1).await, Vec::<u64>::new());
    assert_eq!(
        na.write(1).await,
        0,
        "unfenced: the operator's word that node-a is off"
    );
    assert_eq!(nb.write(1).await, 0);
}
