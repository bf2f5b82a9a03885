//! Setup lines run where the program runs, before it ([`crate::Harness::run_with_setup`]):
//! on the host (direct path) or inside the outer machine's `/run.sh` (nested path).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

const LOG: &str = "/tmp/harness-setup.log";
const FAILED: &str = "@@MVH-SETUP-FAILED@@";
const BEGIN: &str = "@@MVH-SETUP-LOG@@";
const END: &str = "@@MVH-SETUP-END@@";

/// The lines as one shell script body.
fn body(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// `/run.sh` text before the program: run the lines, stop with their output if they fail.
pub fn outer_script_prologue(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "{{\n{}}} >{LOG} 2>&1 </dev/null\nif [ $? -ne 0 ]; then echo '{FAILED}'; cat {LOG}; echo '{END}'; exit 1; fi\n",
        body(lines)
    )
}

/// `/run.sh` text after the program: print what the lines (and their jobs) wrote.
pub fn outer_script_epilogue(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!("echo '{BEGIN}'; cat {LOG}; echo '{END}'\n")
}

fn between<'a>(console: &'a str, begin: &str) -> Option<&'a str> {
    let start = console.find(begin)? + begin.len();
    let rest = &console[start..];
    let end = rest.find(END).unwrap_or(rest.len());
    Some(rest[..end].trim_start_matches(['\r', '\n']))
}

/// The setup output printed on the outer console after the program.
pub fn output_from_console(console: &str) -> String {
    between(console, BEGIN).unwrap_or_default().to_string()
}

/// The setup output if the lines failed (the program did not run).
pub fn failed_output(console: &str) -> Option<String> {
    between(console, FAILED).map(str::to_string)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Setup lines running on the host (direct path): their process group and log.
pub struct DirectSetup {
    pgid: i32,
    log: PathBuf,
}

impl DirectSetup {
    /// Run the lines (`sh -c`, own process group) and wait for the shell; background jobs
    /// keep running. Fails with their output if the shell exits non-zero.
    pub fn start(lines: &[String]) -> Result<DirectSetup> {
        let log = std::env::temp_dir().join(format!(
            "microvm-harness-setup-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let out =
            fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(body(lines))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .context("cannot run the setup lines with sh")?;
        let pgid = child.id() as i32;
        let status = child.wait().context("waiting for the setup lines failed")?;
        let s = DirectSetup { pgid, log };
        if !status.success() {
            let out = s.finish();
            bail!("the setup lines failed ({status}):\n{out}");
        }
        Ok(s)
    }

    /// Kill what the lines left running and return everything they printed.
    pub fn finish(self) -> String {
        // SAFETY: kill(2) on the process group this struct created.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let out = fs::read_to_string(&self.log).unwrap_or_default();
        let _ = fs::remove_file(&self.log);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_sections() {
        let lines = vec!["echo hi".to_string()];
        assert!(outer_script_prologue(&lines).contains("echo hi\n}"));
        assert_eq!(outer_script_prologue(&[]), "");
        let console = format!("boot\n{BEGIN}\nhi\nthere\n{END}\npoweroff");
        assert_eq!(output_from_console(&console), "hi\nthere\n");
        assert_eq!(failed_output(&console), None);
        let failed = format!("x\n{FAILED}\nno tun\n{END}\n");
        assert_eq!(failed_output(&failed).as_deref(), Some("no tun\n"));
    }

    #[test]
    fn direct_setup_runs_and_reports() {
        let s = DirectSetup::start(&["echo one".into(), "(sleep 0.2; echo two) &".into()])
            .expect("setup runs");
        std::thread::sleep(std::time::Duration::from_millis(600));
        let out = s.finish();
        assert_eq!(out, "one\ntwo\n");
        let e = DirectSetup::start(&["echo bad; exit 3".into()])
            .err()
            .expect("fails");
        assert!(format!("{e:#}").contains("bad"), "{e:#}");
    }
}
