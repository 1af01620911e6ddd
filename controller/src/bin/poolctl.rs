//! poolctl: the operator CLI, `virsh pool-list` / `vol-list` style. Talks to
//! node agents directly, as virsh talks to libvirtd.

use clap::{Parser, Subcommand};
use pool_csi_common::{Allocation, GrpcCode, VolumeFormat};
use pool_csi_controller::{
    agents::{
        client::AgentError,
        model::{NewContent, NewVolume},
        Agents,
    },
    join::join_all,
    leader::{orphan_check, orphans},
};
use std::{collections::BTreeMap, process::ExitCode};

/// Operate pool-csi pools and volumes on running node agents.
#[derive(Parser, Debug)]
#[command(name = "poolctl", version, about)]
struct Args {
    /// A node agent, NODE=HOST:PORT; repeat for every node.
    #[arg(long = "agent", env = "AGENTS", value_delimiter = ',', required = true)]
    agents: Vec<String>,
    #[command(flatten)]
    tls: pool_csi_controller::agents::tls::TlsArgs,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every pool on every node, with capacity, allocation and available space.
    PoolList,
    /// One pool in detail, with its free extents (disk pools).
    PoolInfo {
        pool: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Build a pool (mkdir, mkfs on a blank device …) and start it.
    PoolBuild {
        pool: String,
        /// Only on this node (default: every node that has the pool).
        #[arg(long)]
        node: Option<String>,
        /// Build even over a device that holds data. Destroys it.
        #[arg(long)]
        overwrite: bool,
    },
    /// Volumes of a pool (or of every pool).
    VolList { pool: Option<String> },
    /// Create a volume.
    VolCreate {
        pool: String,
        name: String,
        /// Size with an optional K, M, G or T suffix (powers of 1024).
        size: String,
        #[arg(long)]
        format: Option<VolumeFormat>,
        #[arg(long)]
        allocation: Option<Allocation>,
        /// The node (default: the only node with the pool).
        #[arg(long)]
        node: Option<String>,
    },
    /// Grow a volume.
    VolResize {
        pool: String,
        name: String,
        size: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Delete a volume.
    VolDelete {
        pool: String,
        name: String,
        #[arg(long)]
        node: Option<String>,
        /// Overwrite the data with zeros first.
        #[arg(long)]
        wipe: bool,
    },
    /// Orphaned volumes and snapshots (nothing in Kubernetes names them) and
    /// lost volumes (a PV whose volume is gone), as the leading controller
    /// found them; reads the ConfigMap pool-csi-orphans (needs KUBECONFIG
    /// or an in-cluster service account).
    Orphans {
        /// Delete this orphaned volume or snapshot (its id), after checking
        /// again that nothing in Kubernetes names it.
        #[arg(long, value_name = "ID")]
        delete: Option<String>,
        /// List those still in their grace period too.
        #[arg(long)]
        all: bool,
        /// The controller's namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
        namespace: String,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("size {s:?}: unknown suffix {c:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number"))?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("size {s:?} is out of range"))
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// How long ago an RFC 3339 time was, as kubectl prints ages (`45s`,
/// `12m`, `3h`, `2d`).
fn age(since: &str) -> String {
    let Ok(t) = since.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "?".into();
    };
    let s = k8s_openapi::jiff::Timestamp::now()
        .duration_since(t)
        .as_secs()
        .max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// An agent's refusal as poolctl prints it: the gRPC code, then why.
fn err(e: AgentError) -> String {
    format!("{:?}: {}", e.grpc_code(), e.message)
}

/// The node that holds `pool`, or the one the user named.
async fn node_for(agents: &Agents, pool: &str, node: Option<String>) -> Result<String, String> {
    if let Some(n) = node {
        return Ok(n);
    }
    let (invs, _) = agents.all_inventories(std::time::Duration::ZERO).await;
    let with: Vec<_> = invs
        .iter()
        .filter(|i| i.pool(pool).is_some())
        .map(|i| i.node.clone())
        .collect();
    match with.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no node has pool {pool:?}")),
        many => Err(format!(
            "pool {pool:?} is on nodes {}; choose one with --node",
            many.join(", ")
        )),
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut map = BTreeMap::new();
    for a in &args.agents {
        let (n, addr) = a
            .split_once('=')
            .ok_or_else(|| format!("--agent {a:?}: expected NODE=HOST:PORT"))?;
        map.insert(n.to_string(), addr.to_string());
    }
    let agents = Agents::new(&map, args.tls.client_config()?).map_err(|e| e.to_string())?;
    let client = |node: &str| agents.client(node).map_err(|e| e.to_string());
    match args.cmd {
        Command::PoolList => {
            println!(
                "{:<12} {:<16} {:<8} {:<9} {:>12} {:>12} {:>12} {:>7}  MESSAGE",
                "NODE", "NAME", "TYPE", "STATE", "CAPACITY", "ALLOCATION", "AVAILABLE", "VOLUMES"
            );
            let nodes = agents.nodes();
            let calls = nodes.iter().map(|n| async move {
                let pools = match client(n) {
                    Ok(c) => c.inventory(true).await.map(|inv| inv.pools).map_err(err),
                    Err(e) => Err(e),
                };
                (n.clone(), pools)
            });
            for (node, r) in join_all(calls).await {
                match r {
                    Ok(pools) => {
                        for p in pools {
                            println!(
                                "{:<12} {:<16} {:<8} {:<9} {:>12} {:>12} {:>12} {:>7}  {}",
                                node,
                                p.name,
                                p.pool_type,
                                p.state.as_str(),
                                human(p.capacity),
                                human(p.allocation),
                                human(p.available),
                                p.volume_count,
                                p.message
                            );
                        }
                    }
                    Err(e) => println!("{node:<12} (unreachable: {e})"),
                }
            }
        }
        Command::PoolInfo { pool, node } => {
            let node = node_for(&agents, &pool, node).await?;
            let pools = client(&node)?.inventory(true).await.map_err(err)?.pools;
            let p = pools
                .into_iter()
                .find(|p| p.name == pool)
                .ok_or_else(|| format!("node {node} has no pool {pool:?}"))?;
            println!(
                "Name:        {}\nNode:        {node}\nType:        {}\nState:       {}",
                p.name,
                p.pool_type,
                p.state.as_str()
            );
            println!(
                "Capacity:    {}\nAllocation:  {}\nAvailable:   {}\nVolumes:     {}",
                human(p.capacity),
                human(p.allocation),
                human(p.available),
                p.volume_count
            );
            if p.max_volume > 0 {
                println!("Largest new: {}", human(p.max_volume));
            }
            if !p.message.is_empty() {
                println!("Message:     {}", p.message);
            }
            if !p.free_extents.is_empty() {
                println!(
                    "Free extents:\n  {:>14} {:>14} {:>12}",
                    "START", "END", "SIZE"
                );
                for e in &p.free_extents {
                    println!("  {:>14} {:>14} {:>12}", e.start, e.end, human(e.size()));
                }
            }
        }
        Command::PoolBuild {
            pool,
            node,
            overwrite,
        } => {
            let node = node_for(&agents, &pool, node).await?;
            let p = client(&node)?
                .build_pool(&pool, overwrite)
                .await
                .map_err(err)?;
            println!(
                "pool {pool} on {node}: {} ({} available)",
                p.state.as_str(),
                human(p.available)
            );
        }
        Command::VolList { pool } => {
            println!(
                "{:<12} {:<16} {:<40} {:<7} {:>12} {:>12}  CONDITION",
                "NODE", "POOL", "NAME", "FORMAT", "CAPACITY", "ALLOCATION"
            );
            for node in &agents.nodes() {
                match client(node)?.list_volumes(pool.as_deref()).await {
                    Ok(volumes) => {
                        for v in volumes {
                            println!(
                                "{:<12} {:<16} {:<40} {:<7} {:>12} {:>12}  {}",
                                node,
                                v.pool,
                                v.name,
                                v.format,
                                human(v.capacity),
                                human(v.allocation),
                                v.abnormal.as_deref().unwrap_or("ok")
                            );
                        }
                    }
                    Err(e) if e.is_not_found() && pool.is_some() => {}
                    Err(e) => println!("{node:<12} (error: {})", err(e)),
                }
            }
        }
        Command::VolCreate {
            pool,
            name,
            size,
            format,
            allocation,
            node,
        } => {
            let node = node_for(&agents, &pool, node).await?;
            let new = NewVolume {
                pool: pool.clone(),
                name: name.clone(),
                required: parse_size(&size)?,
                limit: 0,
                format,
                allocation,
                wipe_on_delete: false,
                on_delete: Default::default(),
                partition_type: None,
                stripes: None,
                content: NewContent::Empty,
            };
            let v = client(&node)?.create_volume(&new).await.map_err(err)?;
            println!(
                "volume {name} created in {pool} on {node}: {} {}",
                v.format,
                human(v.capacity)
            );
        }
        Command::VolResize {
            pool,
            name,
            size,
            node,
        } => {
            let node = node_for(&agents, &pool, node).await?;
            let r = client(&node)?
                .expand_volume(&pool, &name, parse_size(&size)?, 0)
                .await
                .map_err(err)?;
            println!("volume {name} in {pool} on {node}: {}", human(r.capacity));
        }
        Command::VolDelete {
            pool,
            name,
            node,
            wipe,
        } => {
            let node = node_for(&agents, &pool, node).await?;
            client(&node)?
                .delete_volume(&pool, &name, wipe)
                .await
                .map_err(err)?;
            println!("volume {name} deleted from {pool} on {node}");
        }
        Command::Orphans {
            delete,
            all,
            namespace,
        } => {
            let kube = kube::Client::try_default()
                .await
                .map_err(|e| format!("no Kubernetes API access (KUBECONFIG or in-cluster): {e}"))?;
            match delete {
                Some(id) => {
                    let o = orphan_check::delete(&kube, &namespace, &agents, &id).await?;
                    println!(
                        "{} {} deleted from {} ({})",
                        o.kind.word(),
                        o.id,
                        o.pool,
                        human(o.size)
                    );
                }
                None => {
                    let api = kube::Api::namespaced(kube, &namespace);
                    let (_, found) = orphan_check::read(&api)
                        .await
                        .map_err(|e| format!("read ConfigMap {}: {e}", orphans::CONFIGMAP))?;
                    println!(
                        "{:<8} {:<48} {:<14} {:<12} {:>12} {:>8} PV",
                        "KIND", "ID", "POOL", "NODE", "SIZE", "AGE"
                    );
                    for o in found.iter().filter(|o| all || o.reported) {
                        println!(
                            "{:<8} {:<48} {:<14} {:<12} {:>12} {:>8} {}",
                            o.kind.word(),
                            o.id,
                            o.pool,
                            o.node.as_deref().unwrap_or("(shared)"),
                            human(o.size),
                            age(&o.since),
                            o.pv.as_deref().unwrap_or("")
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("poolctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        for bad in ["", "G", "1X", "-1", "0", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.00 GiB");
    }
}
