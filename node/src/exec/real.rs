//! The runner that starts real processes. The only place a process is spawned.

use super::{Cmd, CommandRunner, ExecError, Output};
use std::ffi::OsString;

/// Spawns commands with `tokio::process`, `LC_ALL=C`, a timeout, and
/// `kill_on_drop` so a cancelled RPC also kills its child. An optional prefix
/// (for example `nsenter --mount=/proc/1/ns/mnt --`) runs every command in the
/// host's namespaces when the node plugin runs in a container.
#[derive(Debug, Clone, Default)]
pub struct RealRunner {
    prefix: Vec<OsString>,
}

impl RealRunner {
    pub fn new(prefix: Vec<OsString>) -> Self {
        Self { prefix }
    }
}

impl RealRunner {
    /// `cmd` behind the prefix, with `LC_ALL=C`, its environment, stdout
    /// and stderr piped, and killed when dropped.
    fn command(&self, cmd: &Cmd) -> tokio::process::Command {
        let (program, args): (&OsString, Vec<&OsString>) = match self.prefix.split_first() {
            Some((p, rest)) => (
                p,
                rest.iter().chain([&cmd.program]).chain(&cmd.args).collect(),
            ),
            None => (&cmd.program, cmd.args.iter().collect()),
        };
        #[allow(clippy::disallowed_methods)] // this is the one place commands are spawned
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env("LC_ALL", "C")
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .envs(cmd.secret_env.0.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

#[tonic::async_trait]
impl CommandRunner for RealRunner {
    fn spawn(&self, cmd: &Cmd) -> Option<Result<tokio::process::Child, ExecError>> {
        tracing::debug!(argv = ?cmd.shown(), "spawn");
        let child = self
            .command(cmd)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn {
                program: cmd.program.to_string_lossy().into(),
                source,
            });
        Some(child)
    }

    async fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        tracing::debug!(argv = ?cmd.shown(), "exec");
        let mut command = self.command(cmd);
        command.stdin(if cmd.stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        let run = async {
            let mut child = command.spawn()?;
            if let (Some(input), Some(mut pipe)) = (&cmd.stdin, child.stdin.take()) {
                use tokio::io::AsyncWriteExt;
                pipe.write_all(input).await?;
                drop(pipe); // EOF
            }
            child.wait_with_output().await
        };
        let out = match tokio::time::timeout(cmd.timeout, run).await {
            Err(_) => {
                return Err(ExecError::Timeout {
                    cmd: cmd.to_string(),
                    timeout: cmd.timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(ExecError::Spawn {
                    program: cmd.program.to_string_lossy().into(),
                    source,
                })
            }
            Ok(Ok(out)) => out,
        };
        Ok(Output {
            status: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_argv_without_a_shell() {
        let r = RealRunner::default();
        let out = r
            .run_ok(&Cmd::new("echo").arg("a b; rm -rf /"))
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "a b; rm -rf /\n");
    }

    #[tokio::test]
    async fn failure_carries_stderr_and_status() {
        let r = RealRunner::default();
        let e = r
            .run_ok(&Cmd::new("ls").arg("/does/not/exist"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(2));
        assert!(e.to_string().contains("No such file"), "{e}");
        let e = r.run(&Cmd::new("/no/such/tool")).await.unwrap_err();
        assert!(matches!(e, ExecError::Spawn { .. }));
    }

    #[tokio::test]
    async fn timeout_kills_the_child() {
        let r = RealRunner::default();
        let e = r
            .run(
                &Cmd::new("sleep")
                    .arg("5")
                    .timeout(Duration::from_millis(50)),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }));
    }

    #[tokio::test]
    async fn stdin_reaches_the_command() {
        let r = RealRunner::default();
        let out = r
            .run_ok(&Cmd::new("cat").stdin("label: gpt\n"))
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "label: gpt\n");
    }

    #[tokio::test]
    async fn secrets_reach_the_environment_but_not_the_log_line() {
        let r = RealRunner::default();
        let cmd = Cmd::new("printenv")
            .arg("PASS")
            .secret_env("PASS", "hunter2");
        assert_eq!(r.run_ok(&cmd).await.unwrap().stdout_str(), "hunter2\n");
        assert!(!format!("{cmd} {cmd:?}").contains("hunter2"));
        // A secret argument reaches the program, not the error or the log.
        let cmd = Cmd::new("sh")
            .args(["-c", "echo \"$1\"; exit 3", "sh"])
            .secret_arg("hunter2");
        let out = r.run(&cmd).await.unwrap();
        assert_eq!(out.stdout_str(), "hunter2\n");
        let e = r.run_ok(&cmd).await.unwrap_err().to_string();
        assert!(
            e.contains("sh -c") && e.contains("***") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(!format!("{cmd:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn prefix_runs_before_the_program() {
        let r = RealRunner::new(vec!["env".into(), "FOO=bar".into()]);
        let out = r.run_ok(&Cmd::new("printenv").arg("FOO")).await.unwrap();
        assert_eq!(out.stdout_str(), "bar\n");
    }
}
