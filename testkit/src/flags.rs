//! The "Command-line flags" section of docs/cli.md against a binary's real
//! flags: every flag documented, every flag settable from an environment
//! variable, and the variable the page names in brackets the one the binary
//! reads. (The messages say "README", where the section used to live.)

/// What is wrong between `cmd` and README's paragraph(s) on `binary` (the
/// text from "`binary`:" to the next blank line, plus any paragraph starting
/// "`binary` also takes"). Empty when they agree.
pub fn mismatches(cmd: &clap::Command, readme: &str, binary: &str) -> Vec<String> {
    let section = readme
        .split("## Command-line flags")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or("");
    let text: String = section
        .split("\n\n")
        .filter(|p| {
            p.starts_with(&format!("`{binary}`:"))
                || p.starts_with(&format!("`{binary}` also takes"))
        })
        .collect::<Vec<_>>()
        .join(" ")
        .replace('\n', " ");
    let mut out = Vec::new();
    if text.is_empty() {
        out.push(format!("README documents no flags of {binary}"));
        return out;
    }
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            out.push(format!("--{long} has no environment variable"));
            continue;
        };
        let flag = format!("`--{long}");
        let Some(at) = text.find(&flag) else {
            out.push(format!("--{long} [{env}] is not in README"));
            continue;
        };
        // "`--flag` [ENV]" or "`--flag ARG` [ENV]": a bracket right after
        // the flag's code span must name the variable the binary reads
        // (`[AGENT_TLS_*]` covers a group).
        let after = &text[at + flag.len()..];
        let after = after
            .split_once('`')
            .map(|(_, r)| r.trim_start())
            .unwrap_or("");
        if let Some(named) = after.strip_prefix('[').and_then(|r| r.split(']').next()) {
            let ok = named == env || named.strip_suffix('*').is_some_and(|p| env.starts_with(p));
            if !ok {
                out.push(format!(
                    "--{long}: README says [{named}], the binary reads {env}"
                ));
            }
        }
    }
    out
}

/// Panics listing what is wrong between `cmd` and this repository's
/// docs/cli.md.
pub fn assert_readme_documents(cmd: &clap::Command, binary: &str) {
    let wrong = mismatches(cmd, include_str!("../../docs/cli.md"), binary);
    assert!(
        wrong.is_empty(),
        "docs/cli.md's flags of {binary}: {wrong:#?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_is_missing_or_misnamed() {
        let cmd = clap::Command::new("x")
            .arg(clap::Arg::new("a").long("alpha").env("ALPHA"))
            .arg(clap::Arg::new("b").long("beta").env("BETA"))
            .arg(clap::Arg::new("c").long("gamma"));
        let readme = "## Command-line flags\n\n`x`: `--alpha` [ALPHO], `--gamma`.\n\n## Next\n";
        assert_eq!(
            mismatches(&cmd, readme, "x"),
            [
                "--alpha: README says [ALPHO], the binary reads ALPHA",
                "--beta [BETA] is not in README",
                "--gamma has no environment variable"
            ]
        );
        let good = "## Command-line flags\n\n`x`: `--alpha` [ALPHA],\n`--beta`.\n\n`x` also takes `--gamma`.\n";
        let cmd = cmd.mut_arg("c", |a| a.env("GAMMA"));
        assert!(mismatches(&cmd, good, "x").is_empty());
    }
}
