//! A scripted runner for tests: expects argv in order, answers with recorded
//! output, panics on a surprise, and checks on drop that every expected call
//! happened.

use super::{Cmd, CommandRunner, ExecError, Output};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

/// What a tool leaves behind besides its output (files it writes, sysfs
/// entries a kernel module adds), for a test to lay out; gets the argv.
pub type Effect = Arc<dyn Fn(&[String]) + Send + Sync>;

/// A recorded reply.
#[derive(Clone, Default)]
pub struct Reply(pub Output, pub Option<Effect>);

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Reply").field(&self.0).finish()
    }
}

impl Reply {
    /// Runs `effect` when the call is made, before the reply is returned.
    pub fn effect(mut self, effect: impl Fn(&[String]) + Send + Sync + 'static) -> Self {
        self.1 = Some(Arc::new(effect));
        self
    }

    pub fn ok() -> Self {
        Self::default()
    }

    pub fn exit(status: i32) -> Self {
        Self(
            Output {
                status,
                ..Default::default()
            },
            None,
        )
    }

    pub fn stdout(mut self, s: impl Into<Vec<u8>>) -> Self {
        self.0.stdout = s.into();
        self
    }

    pub fn stderr(mut self, s: impl Into<Vec<u8>>) -> Self {
        self.0.stderr = s.into();
        self
    }

    /// A reply recorded from the real tool:
    /// `node/tests/fixtures/commands/<case>.{status,stdout,stderr}` (each
    /// directory there has the script that recorded it).
    pub fn recorded(case: &str) -> Self {
        let base = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/commands/");
        let read = |ext: &str| {
            let f = format!("{base}{case}.{ext}");
            std::fs::read(&f).unwrap_or_else(|e| panic!("recorded reply {f}: {e}"))
        };
        let status = String::from_utf8_lossy(&read("status")).trim().parse();
        Self::exit(status.expect("an exit status"))
            .stdout(read("stdout"))
            .stderr(read("stderr"))
    }
}

/// Scripted [`CommandRunner`].
#[derive(Default)]
pub struct FakeRunner {
    script: Mutex<VecDeque<(Vec<String>, Reply)>>,
    /// The stdin of every call, in order (for assertions on scripts).
    pub stdins: Mutex<Vec<Option<String>>>,
    argvs: Mutex<Vec<String>>,
}

impl FakeRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call made so far, as its command line.
    pub fn calls(&self) -> Vec<String> {
        self.argvs.lock().unwrap().clone()
    }

    /// Expects the next call to be exactly `argv`.
    pub fn expect<I, S>(self, argv: I, reply: Reply) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv = argv.into_iter().map(Into::into).collect();
        self.script.lock().unwrap().push_back((argv, reply));
        self
    }
}

#[tonic::async_trait]
impl CommandRunner for FakeRunner {
    async fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        let got = cmd.argv();
        self.argvs.lock().unwrap().push(got.join(" "));
        self.stdins.lock().unwrap().push(
            cmd.stdin
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        );
        let next = self.script.lock().unwrap().pop_front();
        match next {
            Some((want, reply)) if matches(&want, &got) => {
                if let Some(effect) = &reply.1 {
                    effect(&got);
                }
                Ok(reply.0)
            }
            Some((want, _)) => panic!("FakeRunner: expected {want:?}, got {got:?}"),
            None => panic!("FakeRunner: unexpected call {got:?}"),
        }
    }
}

/// Equal argv, where an expected `*` stands for any one argument
/// (a timestamp, a generated path).
fn matches(want: &[String], got: &[String]) -> bool {
    want.len() == got.len() && want.iter().zip(got).all(|(w, g)| w == "*" || w == g)
}

impl Drop for FakeRunner {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let left = self.script.lock().unwrap();
        assert!(
            left.is_empty(),
            "FakeRunner: expected calls never made: {:?}",
            left.iter().map(|(a, _)| a).collect::<Vec<_>>()
        );
    }
}
