//! `sfdisk`: reads partition tables as JSON and writes them from scripts.
//! It never asks the kernel to re-read the whole table (that fails while any
//! partition is in use); callers tell the kernel about the one partition they
//! changed through `partx`.

use crate::exec::{Cmd, CommandRunner, ExecError};
use serde::Deserialize;
use std::path::Path;

/// A partition table as sfdisk reports it. Positions are in sectors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Table {
    /// "gpt" or "dos" (also "sun", "sgi" for tables pool-csi only reads).
    pub label: String,
    pub id: String,
    #[serde(default)]
    pub firstlba: Option<u64>,
    #[serde(default)]
    pub lastlba: Option<u64>,
    #[serde(default = "default_sector")]
    pub sectorsize: u64,
    #[serde(default)]
    pub partitions: Vec<Partition>,
}

fn default_sector() -> u64 {
    512
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Partition {
    /// The kernel's device node, e.g. /dev/sda1, /dev/nvme0n1p2, /dev/loop0p5.
    pub node: String,
    pub start: u64,
    pub size: u64,
    /// GPT type GUID or MBR type code in hex ("83", "5").
    #[serde(rename = "type")]
    pub type_code: String,
    /// GPT partition name (absent on dos tables).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Deserialize)]
struct Wrapper {
    partitiontable: Table,
}

impl Partition {
    /// The partition number: the digits at the end of the node name.
    pub fn number(&self) -> Option<u32> {
        let digits: String = self
            .node
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.chars().rev().collect::<String>().parse().ok()
    }

    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// Parses `sfdisk --json` output.
pub fn parse(json: &[u8]) -> Result<Table, serde_json::Error> {
    Ok(serde_json::from_slice::<Wrapper>(json)?.partitiontable)
}

/// The table on `disk`; Ok(None) when the disk has no partition table.
pub async fn read(runner: &dyn CommandRunner, disk: &Path) -> Result<Option<Table>, ExecError> {
    let cmd = Cmd::new("sfdisk").arg("--json").arg(disk);
    let out = runner.run(&cmd).await?;
    if out.status != 0 {
        if out
            .stderr_str()
            .contains("does not contain a recognized partition table")
        {
            return Ok(None);
        }
        return Err(ExecError::Failed {
            cmd: cmd.to_string(),
            status: out.status,
            stderr: out.stderr_str(),
        });
    }
    parse(&out.stdout).map(Some).map_err(|e| ExecError::Failed {
        cmd: cmd.to_string(),
        status: 0,
        stderr: format!("unreadable JSON: {e}"),
    })
}

fn write_cmd(disk: &Path) -> Cmd {
    Cmd::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
}

/// Writes a new, empty table of `label` ("gpt" or "dos"); `wipe` also
/// clears every other signature on the disk (only with an explicit overwrite).
pub async fn write_label(
    runner: &dyn CommandRunner,
    disk: &Path,
    label: &str,
    wipe: bool,
) -> Result<(), ExecError> {
    let cmd = write_cmd(disk)
        .args(["--wipe", if wipe { "always" } else { "never" }])
        .stdin(format!("label: {label}\n"));
    runner.run_ok(&cmd).await?;
    Ok(())
}

/// Appends one partition; stale signatures inside it are wiped, so a new
/// partition never shows an old filesystem.
pub async fn append(
    runner: &dyn CommandRunner,
    disk: &Path,
    start: u64,
    size: u64,
    type_code: &str,
    name: Option<&str>,
) -> Result<(), ExecError> {
    let mut line = format!("start={start}, size={size}, type={type_code}");
    if let Some(n) = name {
        line.push_str(&format!(", name=\"{n}\""));
    }
    line.push('\n');
    let cmd = write_cmd(disk)
        .args(["--append", "--wipe-partitions", "always"])
        .stdin(line);
    runner.run_ok(&cmd).await?;
    Ok(())
}

/// Deletes partition `number`.
pub async fn delete(runner: &dyn CommandRunner, disk: &Path, number: u32) -> Result<(), ExecError> {
    runner
        .run_ok(&write_cmd(disk).arg("--delete").arg(number.to_string()))
        .await?;
    Ok(())
}

/// Names partition `number` (GPT partition names).
pub async fn set_name(
    runner: &dyn CommandRunner,
    disk: &Path,
    number: u32,
    name: &str,
) -> Result<(), ExecError> {
    let cmd = Cmd::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel", "--part-label"])
        .arg(disk)
        .arg(number.to_string())
        .arg(name);
    runner.run_ok(&cmd).await?;
    Ok(())
}

/// Gives partition `number` a new size (same start).
pub async fn resize(
    runner: &dyn CommandRunner,
    disk: &Path,
    number: u32,
    start: u64,
    size: u64,
) -> Result<(), ExecError> {
    let cmd = write_cmd(disk)
        .arg("-N")
        .arg(number.to_string())
        .stdin(format!("{start},{size}\n"));
    runner.run_ok(&cmd).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::fake::{FakeRunner, Reply};

    #[test]
    fn parses_gpt_tables() {
        let t = parse(include_bytes!(
            "../../tests/fixtures/commands/sfdisk/gpt_two_partitions.json"
        ))
        .unwrap();
        assert_eq!(t.label, "gpt");
        assert_eq!((t.firstlba, t.lastlba), (Some(2048), Some(524254)));
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[1].name.as_deref(), Some("pvc-b"));
        assert_eq!(t.partitions[1].number(), Some(2));
        assert_eq!(t.partitions[0].end(), 2048 + 65536);
    }

    #[test]
    fn parses_dos_tables_with_logical_partitions() {
        let t = parse(include_bytes!(
            "../../tests/fixtures/commands/sfdisk/dos_extended_logical.json"
        ))
        .unwrap();
        assert_eq!(t.label, "dos");
        assert_eq!(t.firstlba, None);
        let numbers: Vec<_> = t
            .partitions
            .iter()
            .map(|p| (p.number().unwrap(), p.type_code.as_str()))
            .collect();
        assert_eq!(numbers, vec![(1, "83"), (2, "5"), (5, "8e"), (6, "83")]);
        assert!(t.partitions.iter().all(|p| p.name.is_none()));
    }

    #[test]
    fn partition_numbers_come_from_any_naming_scheme() {
        for (node, n) in [
            ("/dev/sda1", 1),
            ("/dev/sdb12", 12),
            ("/dev/nvme0n1p3", 3),
            ("/dev/mmcblk0p7", 7),
            ("/dev/loop0p5", 5),
            ("/dev/vdc2", 2),
        ] {
            let p = Partition {
                node: node.into(),
                start: 0,
                size: 1,
                type_code: "83".into(),
                name: None,
                uuid: None,
            };
            assert_eq!(p.number(), Some(n), "{node}");
        }
    }

    #[tokio::test]
    async fn a_disk_without_a_table_reads_as_none() {
        let runner = FakeRunner::new().expect(
            ["sfdisk", "--json", "/dev/vdb"],
            Reply::exit(1)
                .stderr("sfdisk: /dev/vdb: does not contain a recognized partition table\n"),
        );
        assert_eq!(read(&runner, Path::new("/dev/vdb")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn append_sends_one_script_line() {
        let runner = FakeRunner::new().expect(
            [
                "sfdisk",
                "--quiet",
                "--no-reread",
                "--no-tell-kernel",
                "/dev/vdb",
                "--append",
                "--wipe-partitions",
                "always",
            ],
            Reply::ok(),
        );
        append(
            &runner,
            Path::new("/dev/vdb"),
            2048,
            4096,
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            Some("pvc-1"),
        )
        .await
        .unwrap();
        let stdin = runner.stdins.lock().unwrap()[0].clone().unwrap();
        assert_eq!(
            stdin,
            "start=2048, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"pvc-1\"\n"
        );
    }
}
