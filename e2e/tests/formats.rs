//! Every image format a file pool makes, through CSI: the file qemu-img
//! finds is of the format asked for, of the size asked for; it stages, takes
//! data and gives it back; and it grows where qemu can grow it (raw, qcow2,
//! ploop) — vmdk, vpc and vdi keep their size, and asking them to grow is
//! FAILED_PRECONDITION saying so.

use pool_csi_e2e::{req, require, Driver, Options};
use pool_csi_proto::csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_is_made_staged_and_grown_where_qemu_can() {
    require!(true);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    for (format, grows) in [
        ("raw", true),
        ("qcow2", true),
        ("vmdk", false),
        ("vpc", false),
        ("vdi", false),
        ("ploop", true),
    ] {
        let id = c
            .controller
            .create_volume(req::create(
                &format!("f-{format}"),
                64 * MIB,
                &[("volumeFormat", format)],
            ))
            .await
            .unwrap_or_else(|e| panic!("{format}: {e:?}"))
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        if format != "ploop" {
            let file = d.pool_dir.join(format!("f-{format}.{format}"));
            let info = pool_csi_e2e::tool(
                "qemu-img",
                &["info", "--output=json", file.to_str().unwrap()],
            );
            let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            let driver = if format == "vpc" { "vpc" } else { format };
            assert_eq!(info["format"], driver, "{format}: {info}");
            // vpc rounds its geometry up a little.
            let size = info["virtual-size"].as_i64().unwrap();
            assert!((64 * MIB..65 * MIB).contains(&size), "{format}: {size}");
        }
        let staging = d.path(&format!("st-{format}"));
        c.node
            .node_stage_volume(req::stage(&id, &staging, req::mount_cap("ext4")))
            .await
            .unwrap_or_else(|e| panic!("stage {format}: {e:?}"));
        std::fs::write(staging.join("f"), format.as_bytes()).unwrap();
        c.node
            .node_unstage_volume(req::unstage(&id, &staging))
            .await
            .unwrap();
        c.node
            .node_stage_volume(req::stage(&id, &staging, req::mount_cap("ext4")))
            .await
            .unwrap();
        assert_eq!(std::fs::read(staging.join("f")).unwrap(), format.as_bytes());
        c.node
            .node_unstage_volume(req::unstage(&id, &staging))
            .await
            .unwrap();
        let grown = c
            .controller
            .controller_expand_volume(req::expand(&id, 128 * MIB))
            .await;
        match grows {
            true => assert!(
                grown.unwrap().into_inner().capacity_bytes >= 128 * MIB,
                "{format}"
            ),
            false => {
                let e = grown.unwrap_err();
                assert_eq!(e.code(), Code::FailedPrecondition, "{format}: {e:?}");
                assert!(e.message().contains("keep the size"), "{e:?}");
            }
        }
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}
