//! poolctl: the operator CLI, `virsh pool-list` / `vol-list` style. Talks to
//! node agents directly, as virsh talks to libvirtd.

use clap::{Parser, Subcommand};
use pool_csi_controller::agents::{futures_join_all, Agents};
use pool_csi_proto::agent::{self as pb, PoolState};
use std::{collections::BTreeMap, process::ExitCode};

/// Operate pool-csi pools and volumes on running node agents.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A node agent, NODE=HOST:PORT; repeat for every node.
    #[arg(long = "agent", env = "AGENTS", value_delimiter = ',', required = true)]
    agents: Vec<String>,
    #[command(flatten)]
    tls: pool_csi_controller::agents::TlsArgs,
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
        format: Option<String>,
        #[arg(long)]
        allocation: Option<String>,
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

fn state(s: i32) -> &'static str {
    match PoolState::try_from(s) {
        Ok(PoolState::Running) => "running",
        Ok(PoolState::Inactive) => "inactive",
        Ok(PoolState::Building) => "building",
        Ok(PoolState::Degraded) => "degraded",
        Ok(PoolState::Inaccessible) => "inaccessible",
        _ => "unknown",
    }
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
    let err = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match args.cmd {
        Command::PoolList => {
            println!(
                "{:<12} {:<16} {:<8} {:<9} {:>12} {:>12} {:>12} {:>7}  MESSAGE",
                "NODE", "NAME", "TYPE", "STATE", "CAPACITY", "ALLOCATION", "AVAILABLE", "VOLUMES"
            );
            let nodes = agents.nodes();
            let calls = nodes.iter().map(|n| {
                let mut c = agents.client(n);
                async move {
                    (
                        n.clone(),
                        match c.as_mut() {
                            Ok(c) => c
                                .get_inventory(pb::GetInventoryRequest {
                                    count_volumes: true,
                                })
                                .await
                                .map_err(err),
                            Err(e) => Err(e.to_string()),
                        },
                    )
                }
            });
            for (node, r) in futures_join_all(calls).await {
                match r {
                    Ok(inv) => {
                        for p in inv.into_inner().pools {
                            println!(
                                "{:<12} {:<16} {:<8} {:<9} {:>12} {:>12} {:>12} {:>7}  {}",
                                node,
                                p.name,
                                p.r#type,
                                state(p.state),
                                human(p.capacity_bytes),
                                human(p.allocation_bytes),
                                human(p.available_bytes),
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
            let inv = agents
                .client(&node)
                .map_err(|e| e.to_string())?
                .get_inventory(pb::GetInventoryRequest {
                    count_volumes: true,
                })
                .await
                .map_err(err)?;
            let p = inv
                .into_inner()
                .pools
                .into_iter()
                .find(|p| p.name == pool)
                .ok_or_else(|| format!("node {node} has no pool {pool:?}"))?;
            println!(
                "Name:        {}\nNode:        {node}\nType:        {}\nState:       {}",
                p.name,
                p.r#type,
                state(p.state)
            );
            println!(
                "Capacity:    {}\nAllocation:  {}\nAvailable:   {}\nVolumes:     {}",
                human(p.capacity_bytes),
                human(p.allocation_bytes),
                human(p.available_bytes),
                p.volume_count
            );
            if p.max_volume_bytes > 0 {
                println!("Largest new: {}", human(p.max_volume_bytes));
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
                    println!("  {:>14} {:>14} {:>12}", e.start, e.end, human(e.size));
                }
            }
        }
        Command::PoolBuild {
            pool,
            node,
            overwrite,
        } => {
            let node = node_for(&agents, &pool, node).await?;
            let r = agents
                .client(&node)
                .map_err(|e| e.to_string())?
                .build_pool(pb::BuildPoolRequest {
                    pool: pool.clone(),
                    overwrite,
                })
                .await
                .map_err(err)?;
            let p = r.into_inner().pool.unwrap_or_default();
            println!(
                "pool {pool} on {node}: {} ({} available)",
                state(p.state),
                human(p.available_bytes)
            );
        }
        Command::VolList { pool } => {
            println!(
                "{:<12} {:<16} {:<40} {:<7} {:>12} {:>12}  CONDITION",
                "NODE", "POOL", "NAME", "FORMAT", "CAPACITY", "ALLOCATION"
            );
            for node in &agents.nodes() {
                let req = pb::ListVolumesRequest {
                    pool: pool.clone().unwrap_or_default(),
                };
                match agents
                    .client(node)
                    .map_err(|e| e.to_string())?
                    .list_volumes(req)
                    .await
                {
                    Ok(r) => {
                        for v in r.into_inner().volumes {
                            let cond = if v.abnormal {
                                v.condition_message.as_str()
                            } else {
                                "ok"
                            };
                            println!(
                                "{:<12} {:<16} {:<40} {:<7} {:>12} {:>12}  {}",
                                node,
                                v.pool,
                                v.name,
                                v.format,
                                human(v.capacity_bytes),
                                human(v.allocation_bytes),
                                cond
                            );
                        }
                    }
                    Err(s) if s.code() == tonic::Code::NotFound && pool.is_some() => {}
                    Err(s) => println!("{node:<12} (error: {})", err(s)),
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
            let req = pb::CreateVolumeRequest {
                pool: pool.clone(),
                name: name.clone(),
                required_bytes: parse_size(&size)?,
                limit_bytes: 0,
                options: Some(pb::VolumeOptions {
                    format: format.unwrap_or_default(),
                    allocation: allocation.unwrap_or_default(),
                    ..Default::default()
                }),
                source: None,
            };
            let v = agents
                .client(&node)
                .map_err(|e| e.to_string())?
                .create_volume(req)
                .await
                .map_err(err)?
                .into_inner()
                .volume
                .unwrap_or_default();
            println!(
                "volume {name} created in {pool} on {node}: {} {}",
                v.format,
                human(v.capacity_bytes)
            );
        }
        Command::VolResize {
            pool,
            name,
            size,
            node,
        } => {
            let node = node_for(&agents, &pool, node).await?;
            let req = pb::ExpandVolumeRequest {
                pool: pool.clone(),
                name: name.clone(),
                required_bytes: parse_size(&size)?,
                limit_bytes: 0,
            };
            let r = agents
                .client(&node)
                .map_err(|e| e.to_string())?
                .expand_volume(req)
                .await
                .map_err(err)?
                .into_inner();
            println!(
                "volume {name} in {pool} on {node}: {}",
                human(r.capacity_bytes)
            );
        }
        Command::VolDelete {
            pool,
            name,
            node,
            wipe,
        } => {
            let node = node_for(&agents, &pool, node).await?;
            let req = pb::DeleteVolumeRequest {
                pool: pool.clone(),
                name: name.clone(),
                wipe,
            };
            agents
                .client(&node)
                .map_err(|e| e.to_string())?
                .delete_volume(req)
                .await
                .map_err(err)?;
            println!("volume {name} deleted from {pool} on {node}");
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
