//! Running child processes and timing named steps.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A failure, as the message printed to the user.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_owned())
    }
}

pub type Result<T = ()> = std::result::Result<T, Error>;

/// An I/O error with the path it concerns.
pub fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    Error(format!("{what} {}: {e}", path.display()))
}

/// One of a child's output streams.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A child command. Its standard input and output are the terminal's unless
/// a method says otherwise.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    cwd: PathBuf,
    envs: Vec<(OsString, OsString)>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>, cwd: &Path) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            cwd: cwd.to_owned(),
            envs: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cmd {
        self.cwd = dir.to_owned();
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The command line as a shell would show it (program name shortened
    /// to its file name: `$CARGO` is a long toolchain path).
    pub fn display(&self) -> String {
        let program = Path::new(&self.program)
            .file_name()
            .unwrap_or(&self.program)
            .to_string_lossy();
        let mut s = String::new();
        for (k, v) in &self.envs {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
        s.push_str(&program);
        for a in &self.args {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains([' ', '"', '\'']) {
                s.push_str(&format!(" '{a}'"));
            } else {
                s.push(' ');
                s.push_str(&a);
            }
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).current_dir(&self.cwd);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    fn announce(&self) {
        println!("$ {}", self.display());
        let _ = io::stdout().flush();
    }

    fn spawn_error(&self, e: io::Error) -> Error {
        Error(format!(
            "could not start `{}`: {e}",
            Path::new(&self.program).display()
        ))
    }

    fn check(&self, status: ExitStatus) -> Result {
        if status.success() {
            Ok(())
        } else {
            Err(Error(format!("`{}` failed ({status})", self.display())))
        }
    }

    /// Runs the command with the terminal's output, failing on a non-zero exit.
    pub fn run(&self) -> Result {
        self.announce();
        let status = self.command().status().map_err(|e| self.spawn_error(e))?;
        self.check(status)
    }

    /// True when the command starts and exits 0; its output is discarded.
    pub fn succeeds_quietly(&self) -> bool {
        self.read_quietly().is_some()
    }

    /// Its standard output, when it starts and exits 0; nothing is printed.
    pub fn read_quietly(&self) -> Option<String> {
        let out = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its standard output; its standard error goes to the terminal.
    pub fn read(&self) -> Result<String> {
        let out = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        self.check(out.status)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the command, passing `stream` through line by line as it comes
    /// (to the same stream of this process), and returns the exit status
    /// with the lines `keep` selects.
    pub fn run_scanning(
        &self,
        stream: Stream,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(ExitStatus, Vec<String>)> {
        self.announce();
        let mut command = self.command();
        match stream {
            Stream::Stdout => command.stdout(Stdio::piped()),
            Stream::Stderr => command.stderr(Stdio::piped()),
        };
        let mut child = command.spawn().map_err(|e| self.spawn_error(e))?;
        let pipe: Option<Box<dyn Read>> = match stream {
            Stream::Stdout => child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
            Stream::Stderr => child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
        };
        let mut kept = Vec::new();
        if let Some(pipe) = pipe {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = match stream {
                            Stream::Stdout => {
                                let mut out = io::stdout().lock();
                                out.write_all(&line).and_then(|()| out.flush())
                            }
                            Stream::Stderr => {
                                let mut out = io::stderr().lock();
                                out.write_all(&line).and_then(|()| out.flush())
                            }
                        };
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end();
                        if keep(text) {
                            kept.push(text.to_owned());
                        }
                    }
                }
            }
        }
        let status = child.wait().map_err(|e| self.spawn_error(e))?;
        Ok((status, kept))
    }

    /// [`Cmd::run`] that also returns the output lines `keep` selects.
    pub fn run_keeping(&self, stream: Stream, keep: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let (status, kept) = self.run_scanning(stream, keep)?;
        self.check(status)?;
        Ok(kept)
    }

    /// Replaces this process with the command (on Unix), so that it owns
    /// the terminal: Ctrl-C reaches it alone and its exit code is ours.
    /// Elsewhere it runs as a child and this process exits with its code.
    pub fn exec(&self) -> Error {
        self.announce();
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            self.spawn_error(self.command().exec())
        }
        #[cfg(not(unix))]
        {
            match self.command().status() {
                Ok(status) => std::process::exit(status.code().unwrap_or(1)),
                Err(e) => self.spawn_error(e),
            }
        }
    }
}

/// Wall time as `12.3s` or `4m05s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[derive(Debug)]
struct Record {
    name: String,
    took: Duration,
    ok: bool,
    note: String,
}

/// Named steps: each is announced with `==> name`, timed, and a failure
/// names the step.
#[derive(Debug)]
pub struct Steps {
    started: Instant,
    done: Vec<Record>,
}

impl Steps {
    pub fn new() -> Steps {
        Steps {
            started: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Runs one step. A failure becomes ``step `name` failed: ...``.
    pub fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("==> {name}");
        let _ = io::stdout().flush();
        let t = Instant::now();
        let r = f();
        self.done.push(Record {
            name: name.to_owned(),
            took: t.elapsed(),
            ok: r.is_ok(),
            note: String::new(),
        });
        r.map_err(|e| Error(format!("step `{name}` failed: {e}")))
    }

    /// Adds a remark to the last step's summary line.
    pub fn note(&mut self, note: impl Into<String>) {
        if let Some(last) = self.done.last_mut() {
            last.note = note.into();
        }
    }

    /// One line per step with its wall time, and the total.
    pub fn summary(&self, title: &str) {
        println!("==> summary: {title}");
        for r in &self.done {
            let status = if r.ok { "ok" } else { "FAILED" };
            let note = if r.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.note)
            };
            println!(
                "    {status:<6} {:>8}  {}{note}",
                fmt_duration(r.took),
                r.name
            );
        }
        println!(
            "    {:<6} {:>8}",
            "total",
            fmt_duration(self.started.elapsed())
        );
        let _ = io::stdout().flush();
    }
}

/// Runs `f` with fresh steps and prints their summary afterwards, whether
/// it succeeded or not.
pub fn with_summary(title: &str, f: impl FnOnce(&mut Steps) -> Result) -> Result {
    let mut steps = Steps::new();
    let r = f(&mut steps);
    steps.summary(title);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(fmt_duration(Duration::from_secs(245)), "4m05s");
    }

    #[test]
    fn command_lines_are_shown_as_typed() {
        let c = Cmd::new("/x/bin/cargo", Path::new("/"))
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "a b"]);
        assert_eq!(c.display(), "RUSTC_BOOTSTRAP=1 cargo fuzz run 'a b'");
    }

    #[test]
    fn a_failed_step_is_named() {
        let mut s = Steps::new();
        let e = s
            .step("clippy", || -> Result { Err("boom".into()) })
            .unwrap_err();
        assert_eq!(e.0, "step `clippy` failed: boom");
        assert!(s.step("fmt", || Ok(3)).is_ok());
    }
}
