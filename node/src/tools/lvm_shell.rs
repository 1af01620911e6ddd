//! A long-lived `lvm` shell per logical pool, as lvmdbusd keeps one: the
//! `lvm` binary reads command lines on stdin, so a create or delete does not
//! pay process start, library loading and configuration parsing for each of
//! its steps (measured: an `lvcreate` 21 ms on its own, 12 ms in the shell).
//!
//! The protocol: the shell runs with `LVM_SYSTEM_DIR` set to the directory
//! [`super::lvm_system`] writes (JSON reports, the command log on) and
//! `LVM_REPORT_FD=1`, so stdout carries exactly one JSON object per command:
//! its report, if any, and its log, whose last `shell`/`cmd` entry holds the
//! command's return code. Messages are log entries, so nothing else is
//! printed there; stderr is drained and its last lines kept for errors.
//!
//! What goes through it: only reports (`lvs`, `vgs`, `fullreport`) and commands that
//! carry `--yes` (a prompt would read the next command line as its
//! answer), whose arguments need no quoting and whose environment is the
//! shell's. Anything else runs on its own, as do all commands when the
//! runner keeps no processes (tests' recorded fakes).
//!
//! Failures: a command that outlives its timeout, or whose caller goes away
//! before the answer, kills the shell (the next command starts a new one),
//! so an answer is never read by the wrong command; a shell that dies
//! mid-command fails that command, and a report is asked once more of a new
//! shell (a change may have been applied, so changes are not repeated: the
//! caller's own idempotence decides). A shell that cannot answer its very
//! first command means this lvm cannot serve the protocol (no command line
//! editor, or too old for the command log): the pool's commands then run
//! one process each. LVM's locking is per command inside the shell, as
//! it is for separate processes, so other LVM tools stay serialised with it.

use crate::exec::{Cmd, CommandRunner, ExecError, Output};
use std::{
    collections::VecDeque,
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout},
};

/// Lines of stderr kept for an error message.
const STDERR_TAIL: usize = 8;

/// One pool's shell; started on first use.
pub struct LvmShell {
    /// How the shell is started: `lvm` with its environment.
    session: Cmd,
    proc: tokio::sync::Mutex<Option<Proc>>,
    /// Shells started so far (1 + restarts).
    started: std::sync::atomic::AtomicU64,
    /// Set when a shell could not answer its first command: this lvm
    /// cannot serve the protocol, and commands run one process each.
    unusable: std::sync::atomic::AtomicBool,
}

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Read from stdout, not yet answered.
    buf: Vec<u8>,
    /// Commands this shell answered.
    answered: u64,
    /// How far `buf` has been scanned for the end of the object.
    scan: Scan,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl LvmShell {
    /// A shell configured by `system_dir` (the `lvm-shell` directory).
    pub fn new(system_dir: &Path) -> Self {
        Self::with_program("lvm", system_dir)
    }

    /// [`Self::new`] with another program as the shell (tests: one that
    /// cannot serve the protocol).
    pub fn with_program(program: &str, system_dir: &Path) -> Self {
        Self {
            session: Cmd::new(program)
                .env("LVM_SYSTEM_DIR", &system_dir.display().to_string())
                .env("LVM_REPORT_FD", "1")
                .env("LVM_SUPPRESS_FD_WARNINGS", "1"),
            proc: tokio::sync::Mutex::new(None),
            started: 0.into(),
            unusable: false.into(),
        }
    }

    /// How many shells were started (a restart counts).
    pub fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The running shell's process id, if one runs.
    pub async fn pid(&self) -> Option<u32> {
        self.proc.lock().await.as_ref().and_then(|p| p.child.id())
    }

    /// Runs `cmd` (`lvm <subcommand> …`) in the shell when it may go there
    /// (see the module docs), else on its own; any exit status is an `Ok`.
    pub async fn run(&self, runner: &dyn CommandRunner, cmd: &Cmd) -> Result<Output, ExecError> {
        let Some(line) = shell_line(cmd) else {
            return runner.run(cmd).await;
        };
        let report = matches!(
            cmd.args.first().and_then(|a| a.to_str()),
            Some("lvs" | "vgs" | "fullreport")
        );
        for attempt in 0.. {
            if self.unusable.load(std::sync::atomic::Ordering::Relaxed) {
                return runner.run(cmd).await;
            }
            let mut slot = self.proc.lock().await;
            // Out of the slot for the exchange: if this future is dropped
            // half-way (a cancelled RPC), the shell is dropped — killed —
            // with it, and its unread answer can never become the next
            // command's. It goes back only after a whole answer.
            let mut p = match slot.take() {
                Some(p) => p,
                None => match runner.spawn(&self.session) {
                    None => {
                        drop(slot);
                        return runner.run(cmd).await;
                    }
                    Some(child) => self.start(child?)?,
                },
            };
            match tokio::time::timeout(cmd.timeout, p.ask(&line)).await {
                Ok(Ok(out)) => {
                    p.answered += 1;
                    *slot = Some(p);
                    return Ok(out);
                }
                Err(_) => {
                    tracing::warn!(cmd = %cmd, timeout = ?cmd.timeout, "lvm shell command timed out; the shell was killed");
                    return Err(ExecError::Timeout {
                        cmd: cmd.to_string(),
                        timeout: cmd.timeout,
                    });
                }
                Ok(Err(why)) => {
                    let tail = p.stderr_tail();
                    let first = p.answered == 0;
                    drop(p);
                    if first && attempt == 0 {
                        // This lvm cannot serve the protocol (built without
                        // a command line editor, too old for the command
                        // log): every command runs on its own from now on.
                        tracing::warn!(why = %why, stderr = %tail, "the lvm shell does not answer as expected; lvm commands run one process each");
                        self.unusable
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        drop(slot);
                        return runner.run(cmd).await;
                    }
                    tracing::warn!(cmd = %cmd, why = %why, stderr = %tail, "lvm shell lost; it restarts with the next command");
                    if report && attempt == 0 {
                        continue;
                    }
                    return Err(ExecError::Failed {
                        cmd: cmd.to_string(),
                        status: -1,
                        stderr: format!("the lvm shell {why}; {tail}"),
                    });
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn start(&self, mut child: Child) -> Result<Proc, ExecError> {
        let lost = |what: &str| ExecError::Failed {
            cmd: "lvm (shell)".into(),
            status: -1,
            stderr: format!("started without {what}"),
        };
        let stdin = child.stdin.take().ok_or_else(|| lost("stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| lost("stdout"))?;
        let err = child.stderr.take().ok_or_else(|| lost("stderr"))?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(l);
            }
        });
        let n = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(pid = child.id(), restarts = n, "lvm shell started");
        Ok(Proc {
            child,
            stdin,
            stdout,
            buf: Vec::new(),
            answered: 0,
            scan: Scan::default(),
            stderr,
        })
    }
}

impl Proc {
    fn stderr_tail(&self) -> String {
        let t = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        match t.is_empty() {
            true => "it printed nothing on stderr".into(),
            false => format!("its stderr ended: {}", Vec::from(t.clone()).join(" / ")),
        }
    }

    /// Sends `line` and reads its answer; Err says why the shell is lost
    /// (gone, or it printed something that is no answer).
    async fn ask(&mut self, line: &str) -> Result<Output, String> {
        let started = Instant::now();
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("took no command ({e})"))?;
        loop {
            // Parsed once, when the scan has seen the object close: lvm
            // writes a large report in many small pieces.
            if let Some(end) = self.scan.end(&self.buf) {
                let (object, used) = first_object(&self.buf[..end])?
                    .ok_or("printed an object that does not parse")?;
                let out = answer(&object, &self.buf[..used])?;
                self.buf.drain(..end);
                self.scan = Scan::default();
                tracing::debug!(line = %line.trim_end(), status = out.status, took = ?started.elapsed(), "lvm shell");
                return Ok(out);
            }
            // Into the heap buffer itself: a buffer in this future would
            // make every caller's future that much larger.
            self.buf.reserve(64 * 1024);
            let n = self
                .stdout
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("could not be read ({e})"))?;
            if n == 0 {
                return Err("exited".into());
            }
        }
    }
}

/// Where the first top-level JSON object in a growing buffer ends, found
/// by scanning each byte once (braces outside strings).
#[derive(Default)]
struct Scan {
    at: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// The offset just past the first object's closing brace, once `buf`
    /// holds it.
    fn end(&mut self, buf: &[u8]) -> Option<usize> {
        while self.at < buf.len() {
            let b = buf[self.at];
            self.at += 1;
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(self.at);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// The command line for the shell, or None when `cmd` must run on its own.
fn shell_line(cmd: &Cmd) -> Option<String> {
    if cmd.program != "lvm" || cmd.stdin.is_some() || !cmd.secret_env.0.is_empty() {
        return None;
    }
    // The shell's own environment covers these; anything else differs.
    if cmd
        .env
        .iter()
        .any(|(k, _)| k != "LVM_SUPPRESS_FD_WARNINGS" && k != "LVM_SYSTEM_DIR")
    {
        return None;
    }
    let args: Vec<&str> = cmd.args.iter().map(|a| a.to_str()).collect::<Option<_>>()?;
    let sub = *args.first()?;
    if !matches!(sub, "lvs" | "vgs" | "fullreport") && !args.contains(&"--yes") {
        return None;
    }
    // The shell splits on blanks and honours quotes, escapes and comments;
    // an argument needing any of that (or a line break, which would start
    // another command) is not sent.
    let plain = |a: &&str| {
        !a.is_empty()
            && a.bytes().all(|b| {
                b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\' | b'#' | b'`' | b'$')
            })
    };
    if !args.iter().all(plain) {
        return None;
    }
    Some(format!("{}\n", args.join(" ")))
}

/// The first complete JSON object in `buf` and the bytes it takes, None
/// when it is not complete yet.
fn first_object(buf: &[u8]) -> Result<Option<(serde_json::Value, usize)>, String> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    match it.next() {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some((v, it.byte_offset()))),
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(format!("printed something that is not JSON ({e})")),
    }
}

/// A command's [`Output`] from its JSON object: the exit status from the
/// log's `shell`/`cmd` return code (1 is success, as `lvm` exits 0), the
/// error entries as stderr, and the object itself as stdout (the report
/// parsers ignore the `log` beside `report`).
fn answer(object: &serde_json::Value, bytes: &[u8]) -> Result<Output, String> {
    let log = object
        .get("log")
        .and_then(|l| l.as_array())
        .ok_or("answered without a command log (is report_command_log on?)")?;
    let field =
        |e: &serde_json::Value, k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let ret = log
        .iter()
        .rev()
        .find(|e| {
            field(e, "log_context").as_deref() == Some("shell")
                && field(e, "log_object_type").as_deref() == Some("cmd")
        })
        .and_then(|e| field(e, "log_ret_code")?.parse::<i32>().ok())
        .ok_or("answered without the command's return code")?;
    let errors: Vec<String> = log
        .iter()
        .filter(|e| field(e, "log_type").as_deref() == Some("error"))
        .filter_map(|e| field(e, "log_message"))
        .collect();
    Ok(Output {
        status: if ret == 1 { 0 } else { ret },
        stdout: bytes.to_vec(),
        stderr: errors.join("\n").into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvm(args: &[&str]) -> Cmd {
        Cmd::new("lvm")
            .args(args.iter().copied())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
    }

    #[test]
    fn only_plain_reports_and_yes_commands_go_to_the_shell() {
        assert_eq!(
            shell_line(&lvm(&["lvs", "--reportformat", "json", "vg0"])).as_deref(),
            Some("lvs --reportformat json vg0\n")
        );
        assert!(shell_line(&lvm(&["lvremove", "--yes", "vg0/a"])).is_some());
        // Might prompt, and the next line would be its answer.
        assert!(shell_line(&lvm(&["vgcreate", "vg0", "/dev/sdb"])).is_none());
        // Would need quoting, or would start a second command.
        for bad in [
            "a b",
            "a\nlvremove",
            "a'b",
            "a\"b",
            "a\\b",
            "#a",
            "",
            "$(x)",
        ] {
            assert!(
                shell_line(&lvm(&["lvcreate", "--yes", "--addtag", bad, "vg0"])).is_none(),
                "{bad:?}"
            );
        }
        assert!(shell_line(&lvm(&["lvs"]).env("LVM_OTHER", "1")).is_none());
        assert!(shell_line(&lvm(&["lvs"]).stdin("x")).is_none());
        assert!(shell_line(&Cmd::new("sfdisk").arg("--yes")).is_none());
    }

    /// Recorded from lvm 2.03.16's shell with the `lvm-shell` settings.
    const FAILED_LVS: &str = r#"  {
      "report": [ { "lv": [ ] } ] ,
      "log": [
          {"log_seq_num":"2", "log_type":"error", "log_context":"processing", "log_object_type":"vg", "log_object_name":"nosuchvg", "log_object_id":"", "log_object_group":"", "log_object_group_id":"", "log_message":"Volume group \"nosuchvg\" not found", "log_errno":"-1", "log_ret_code":"0"},
          {"log_seq_num":"5", "log_type":"status", "log_context":"shell", "log_object_type":"cmd", "log_object_name":"lvs", "log_object_id":"", "log_object_group":"", "log_object_group_id":"", "log_message":"failure", "log_errno":"0", "log_ret_code":"5"}
      ]
  }
  {"#;

    #[test]
    fn an_answer_is_one_object_with_its_return_code_and_errors() {
        let (obj, used) = first_object(FAILED_LVS.as_bytes()).unwrap().unwrap();
        assert!(
            FAILED_LVS[used..].trim_start().starts_with('{'),
            "the next object is left"
        );
        let out = answer(&obj, &FAILED_LVS.as_bytes()[..used]).unwrap();
        assert_eq!(out.status, 5);
        assert_eq!(out.stderr_str(), "Volume group \"nosuchvg\" not found");
        assert!(crate::tools::lvm::is_not_found(
            &out.succeeded(&lvm(&["lvs"])).unwrap_err()
        ));
        // Half an object is not an answer yet; garbage is an error.
        assert!(first_object(&FAILED_LVS.as_bytes()[..100])
            .unwrap()
            .is_none());
        assert!(first_object(b"  Logical volume created\n").is_err());
        let ok = br#"{"log":[{"log_type":"status","log_context":"shell","log_object_type":"cmd","log_ret_code":"1"}]}"#;
        let (obj, used) = first_object(ok).unwrap().unwrap();
        assert_eq!(answer(&obj, &ok[..used]).unwrap().status, 0);
        assert!(answer(&serde_json::json!({"report": []}), b"").is_err());
    }

    #[test]
    fn the_scan_finds_an_objects_end_across_pieces_and_strings() {
        let text = FAILED_LVS.as_bytes();
        let (_, used) = first_object(text).unwrap().unwrap();
        let mut scan = Scan::default();
        // Fed a few bytes at a time, as the pipe delivers them.
        let found = (1..=text.len())
            .step_by(7)
            .find_map(|n| scan.end(&text[..n]));
        assert_eq!(found, Some(used));
        let tricky = br#"{"m":"a } or ] in \" a string {"} {"#;
        assert_eq!(Scan::default().end(tricky), Some(tricky.len() - 2));
    }
}
