//! External commands: argument vectors only, never a shell, behind one
//! [`CommandRunner`] that tests can replace.

pub mod fake;
pub mod real;

use pool_csi_common::GrpcCode;
use std::{ffi::OsString, fmt, time::Duration};

/// A command line: program plus arguments, each a separate string.
#[derive(Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Indices into `args` of secrets a tool takes no other way (iscsiadm's
    /// CHAP passwords): passed on, but shown as `***` in errors and logs.
    pub secret_args: Vec<usize>,
    pub timeout: Duration,
    /// Bytes written to the command's stdin (a script for sfdisk …).
    pub stdin: Option<Vec<u8>>,
    /// Environment for secrets (CHAP passwords): never in argv, where any
    /// process could read them, and never printed.
    pub secret_env: SecretEnv,
    /// Other environment the tool needs (beside `LC_ALL=C`).
    pub env: Vec<(String, String)>,
}

/// Environment variables whose values are secret: Debug shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(pub Vec<(String, String)>);

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=***")))
            .finish()
    }
}

/// The default time a storage command may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            secret_args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            stdin: None,
            secret_env: SecretEnv::default(),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn secret_env(mut self, key: &str, value: &str) -> Self {
        self.secret_env.0.push((key.into(), value.into()));
        self
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// An argument that is a secret (see [`Cmd::secret_args`]).
    pub fn secret_arg(mut self, a: impl Into<OsString>) -> Self {
        self.secret_args.push(self.args.len());
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The argv as lossy strings, secrets included (what runs, and what a
    /// test's fake runner matches); errors and logs use [`Cmd::shown`].
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    /// The argv as errors and logs show it: secret arguments as `***`.
    pub fn shown(&self) -> Vec<String> {
        let mut argv = self.argv();
        for i in &self.secret_args {
            argv[i + 1] = "***".into();
        }
        argv
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown().join(" "))
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cmd")
            .field("argv", &self.shown())
            .field("timeout", &self.timeout)
            .field("stdin", &self.stdin.as_ref().map(Vec::len))
            .field("secret_env", &self.secret_env)
            .field("env", &self.env)
            .finish()
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit code; -1 when killed by a signal.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr, trimmed to its first lines: the cause is at the top, and a
    /// tool's usage text after it only buries it.
    pub fn stderr_str(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let mut lines = text.trim().lines();
        let mut out: Vec<&str> = lines.by_ref().take(4).collect();
        if lines.next().is_some() {
            out.push("…");
        }
        out.join("\n")
    }
}

/// A command that could not run, timed out, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is missing or not executable.
    #[error("failed to start {program}: is it installed on the node?")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Killed after its timeout.
    #[error("{cmd} did not finish within {timeout:?} and was killed")]
    Timeout { cmd: String, timeout: Duration },
    /// Exited non-zero; stderr says why.
    #[error("{cmd} failed with exit code {status}: {stderr}")]
    Failed {
        cmd: String,
        status: i32,
        stderr: String,
    },
}

impl GrpcCode for ExecError {
    fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Timeout { .. } => tonic::Code::DeadlineExceeded,
            Self::Spawn { .. } | Self::Failed { .. } => tonic::Code::Internal,
        }
    }
}

impl ExecError {
    /// The exit code of a failed command, if it ran.
    pub fn status(&self) -> Option<i32> {
        match self {
            Self::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Runs external commands.
#[tonic::async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs `cmd` to completion; any exit status is an `Ok(Output)`.
    async fn run(&self, cmd: &Cmd) -> Result<Output, ExecError>;

    /// Runs `cmd` and treats a non-zero exit as [`ExecError::Failed`].
    async fn run_ok(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        self.run(cmd).await?.succeeded(cmd)
    }

    /// Starts `cmd` and leaves it running with stdin, stdout and stderr
    /// piped (killed when the child is dropped), for a tool the node drives
    /// over a pipe: the lvm shell. None: this runner keeps no processes
    /// (a test's fake), and the caller runs each command on its own.
    fn spawn(&self, _cmd: &Cmd) -> Option<Result<tokio::process::Child, ExecError>> {
        None
    }
}

impl Output {
    /// This output, or [`ExecError::Failed`] when `cmd` exited non-zero.
    pub fn succeeded(self, cmd: &Cmd) -> Result<Output, ExecError> {
        if self.status != 0 {
            return Err(ExecError::Failed {
                cmd: cmd.to_string(),
                status: self.status,
                stderr: self.stderr_str(),
            });
        }
        Ok(self)
    }
}
