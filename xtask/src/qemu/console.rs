//! A VM's serial console: QEMU serves it on a Unix socket (and copies it to
//! the VM's log); the harness reads everything the guest prints, waits for
//! lines, and can log in and run a command.

use super::timing::{within, PROMPT_ANSWERS, SUDO_ASKS};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::interrupt;

/// Everything the guest printed so far.
#[derive(Default)]
struct Transcript {
    bytes: Vec<u8>,
    closed: bool,
}

pub(crate) struct Console {
    shared: Arc<(Mutex<Transcript>, Condvar)>,
    input: UnixStream,
}

/// A line found in the transcript: its text and where it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) line: String,
    pub(crate) end: usize,
}

impl Console {
    /// Connects to the socket QEMU listens on (it may take QEMU a moment to
    /// create it).
    pub(crate) fn connect(socket: &Path, within: Duration) -> Result<Console> {
        let deadline = Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| {
                        format!("QEMU's serial console {} did not open", socket.display())
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Console::over(stream)
    }

    /// A console over a connected stream: a thread reads what the guest
    /// prints into the transcript.
    pub(crate) fn over(stream: UnixStream) -> Result<Console> {
        let input = stream.try_clone()?;
        let shared: Arc<(Mutex<Transcript>, Condvar)> = Arc::default();
        let reader = shared.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                let (lock, wake) = &*reader;
                let mut t = interrupt::lock(lock);
                if n == 0 {
                    t.closed = true;
                    wake.notify_all();
                    return;
                }
                t.bytes.extend_from_slice(&buf[..n]);
                wake.notify_all();
            }
        });
        Ok(Console { shared, input })
    }

    /// How much the guest has printed: a position to search from.
    pub(crate) fn position(&self) -> usize {
        self.transcript().bytes.len()
    }

    /// Has QEMU closed the console (the VM is gone)?
    pub(crate) fn closed(&self) -> bool {
        self.transcript().closed
    }

    /// The first complete line after `from` that contains `needle`.
    pub(crate) fn find(&self, from: usize, needle: &str) -> Option<Found> {
        find_line(&self.transcript().bytes, from, needle)
    }

    /// The first place after `from` where `needle` was printed (not
    /// necessarily a whole line: prompts end without a newline).
    pub(crate) fn find_text(&self, from: usize, needle: &str) -> Option<usize> {
        let t = self.transcript();
        position(t.bytes.get(from..)?, needle).map(|i| from + i + needle.len())
    }

    /// Waits until `needle` is printed after `from`; returns where it ends.
    pub(crate) fn wait_text(&self, from: usize, needle: &str, until: Instant) -> Result<usize> {
        loop {
            if let Some(end) = self.find_text(from, needle) {
                return Ok(end);
            }
            interrupt::check()?;
            if self.closed() {
                bail!("the VM's console closed before it printed {needle:?}");
            }
            // A kernel that stopped prints nothing more: say so now, with
            // where it stopped, not at the deadline.
            if let Some(panic) = self.kernel_panic(from) {
                bail!("the VM's kernel stopped before it printed {needle:?}: {panic}");
            }
            if Instant::now() > until {
                bail!("timed out waiting for {needle:?} on the console");
            }
            self.wait_a_little();
        }
    }

    /// The kernel's panic after `from`, in its words, and where an oops
    /// before it found the kernel (`EIP is at ...`).
    pub(crate) fn kernel_panic(&self, from: usize) -> Option<String> {
        let panic = self.find(from, super::KERNEL_PANIC)?;
        let said = super::from_word(&panic.line, super::KERNEL_PANIC);
        Some(match self.find(from, "EIP is at") {
            Some(at) => format!("{said} ({})", at.line),
            None => said,
        })
    }

    /// Waits for new output (or a short while).
    pub(crate) fn wait_a_little(&self) {
        let (lock, wake) = &*self.shared;
        let t = interrupt::lock(lock);
        let _ = wake.wait_timeout(t, Duration::from_millis(250));
    }

    /// Lets go of the console (QEMU serves one client at a time), so the
    /// user can attach to it.
    pub(crate) fn detach(&self) {
        let _ = self.input.shutdown(std::net::Shutdown::Both);
    }

    pub(crate) fn send(&self, text: &str) -> Result<()> {
        (&self.input)
            .write_all(text.as_bytes())
            .context("writing to the VM's serial console")
    }

    /// Logs in on the serial getty.
    pub(crate) fn login(&self, user: &str, password: &str, until: Instant) -> Result<()> {
        let mut from = self.position();
        // The prompt may have been printed long ago, or be buried under
        // kernel messages: ask for a fresh one until it comes.
        let prompt = loop {
            self.send("\n")?;
            let soon = within(PROMPT_ANSWERS, until);
            match self.wait_text(from, "login: ", soon) {
                Ok(end) => break end,
                Err(_) if Instant::now() < until => from = self.position(),
                Err(e) => return Err(e.context("no login prompt on the serial console")),
            }
        };
        self.send(&format!("{user}\n"))?;
        let asked = self
            .wait_text(prompt, "assword: ", until)
            .context("no password prompt after the user name")?;
        self.send(&format!("{password}\n"))?;
        self.wait_text(asked, "$ ", until)
            .with_context(|| format!("logging in as {user} failed (no shell prompt)"))?;
        Ok(())
    }

    /// Gives the logged-in user's sudo a fresh timestamp: the password is
    /// typed at sudo's own prompt, which does not echo it, so it never
    /// lands in the console's transcript. `sudo -n` works after.
    pub(crate) fn sudo(&self, password: &str, until: Instant) -> Result<()> {
        let from = self.position();
        // Split in two like run()'s markers: the typed line never matches.
        self.send("sudo -k; sudo -p 'KRGISO-SU''DO: ' -v\n")?;
        let soon = within(SUDO_ASKS, until);
        let asked = self
            .wait_text(from, "KRGISO-SUDO: ", soon)
            .context("sudo asked for no password (is sudo in the profile's [node1] packages?)")?;
        self.send(&format!("{password}\n"))?;
        // sudo flushes the terminal's input when it gives it back: type
        // nothing more until the shell asks.
        self.wait_text(asked, "$ ", until)
            .context("no shell prompt after sudo's password")?;
        let said = self.run("sudo -n true && echo sudo-o''k", until)?;
        if !said.lines().any(|l| l.trim() == "sudo-ok") {
            bail!("sudo refused the cluster user: {said:?}");
        }
        Ok(())
    }

    /// Runs a shell command in the logged-in session; returns its output.
    pub(crate) fn run(&self, command: &str, until: Instant) -> Result<String> {
        let from = self.position();
        // The markers are typed split in two, so the echo of the typed
        // line never matches them; only the command's output does.
        // A command sent to the background ends with `&`, which is its
        // separator already (`&;` would be a syntax error).
        let then = if command.trim_end().ends_with('&') {
            " "
        } else {
            "; "
        };
        self.send(&format!(
            "echo KRGISO-OUT''PUT-BEGIN; {command}{then}echo KRGISO-OUT''PUT-END\n"
        ))?;
        let begin = self.wait_text(from, "KRGISO-OUTPUT-BEGIN", until)?;
        let end = self.wait_text(begin, "KRGISO-OUTPUT-END", until)?;
        let t = self.transcript();
        let out = &t.bytes[begin..end - "KRGISO-OUTPUT-END".len()];
        Ok(String::from_utf8_lossy(out)
            .replace('\r', "")
            .trim()
            .to_owned())
    }

    /// The last `n` lines the guest printed.
    pub(crate) fn tail(&self, n: usize) -> Vec<String> {
        let t = self.transcript();
        let text = String::from_utf8_lossy(&t.bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.replace('\r', ""))
            .collect()
    }

    fn transcript(&self) -> std::sync::MutexGuard<'_, Transcript> {
        interrupt::lock(&self.shared.0)
    }
}

fn find_line(bytes: &[u8], from: usize, needle: &str) -> Option<Found> {
    let hay = bytes.get(from..)?;
    let at = position(hay, needle)?;
    let start = hay[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let len = hay[at..].iter().position(|&b| b == b'\n')?;
    let line = String::from_utf8_lossy(&hay[start..at + len]);
    Some(Found {
        line: strip_escapes(line.trim()),
        end: from + at + len + 1,
    })
}

/// Where `needle` first starts in `hay`.
fn position(hay: &[u8], needle: &str) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

/// The text of a console line without terminal escape sequences.
fn strip_escapes(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn finds_whole_lines_only_and_strips_escapes() {
        let text = b"boot\r\n\x1b[0;32mkrgiso: node1 dhcp=full\x1b[0m\r\nkrgiso: half";
        let found = find_line(text, 0, "krgiso:").unwrap();
        assert_eq!(found.line, "krgiso: node1 dhcp=full");
        assert_eq!(&text[found.end..], b"krgiso: half");
        assert_eq!(
            find_line(text, found.end, "krgiso:"),
            None,
            "unfinished line"
        );
    }

    /// A console socket whose guest end runs `guest`, and the console
    /// connected to it (the directory holds the socket).
    fn fake_guest(
        guest: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, Console, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        let listener = UnixListener::bind(&path).unwrap();
        let guest = std::thread::spawn(move || guest(listener.accept().unwrap().0));
        let console = Console::connect(&path, Duration::from_secs(5)).unwrap();
        (dir, console, guest)
    }

    /// A guest whose kernel stops while a command runs: the wait ends at
    /// once with the kernel's words, not at its deadline.
    #[test]
    fn a_kernel_that_stops_ends_the_wait_at_once() {
        let (_dir, console, guest) = fake_guest(|mut s| {
            // The oops a Kerrighed node printed in CI, cut short.
            s.write_all(b"krg@node132:~$ BUG: unable to handle kernel NULL pointer dereference at virtual address 00000000\r\nEIP is at __get_alloc_kddm_obj_entry+0x51/0x84 [kerrighed]\r\n <0>Kernel panic - not syncing: Fatal exception in interrupt\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_secs(3));
        });
        let t = Instant::now();
        let err = console
            .wait_text(0, "KRGISO-OUTPUT-BEGIN", t + Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "waited {:?}",
            t.elapsed()
        );
        assert!(
            err.contains("Kernel panic - not syncing: Fatal exception")
                && err.contains("EIP is at __get_alloc_kddm_obj_entry"),
            "{err}"
        );
        guest.join().unwrap();
    }

    /// A fake guest on the other end of the socket: a getty and a shell.
    #[test]
    fn logs_in_and_reads_a_command_output_between_markers() {
        let (_dir, console, guest) = fake_guest(|mut s| {
            let mut typed = String::new();
            let mut read_line = |s: &mut UnixStream| {
                typed.clear();
                let mut b = [0u8; 1];
                while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                    typed.push(char::from(b[0]));
                }
                typed.clone()
            };
            assert_eq!(read_line(&mut s), "");
            s.write_all(b"[  3.1] some kernel noise\r\nnode1 login: ")
                .unwrap();
            assert_eq!(read_line(&mut s), "krg");
            s.write_all(b"krg\r\nPassword: ").unwrap();
            assert_eq!(read_line(&mut s), "s3cret");
            s.write_all(b"\r\nkrg@node1:~$ ").unwrap();
            let line = read_line(&mut s);
            // The terminal echoes the typed line, then the shell runs it.
            s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
            assert!(line.contains("ls /srv"), "{line}");
            s.write_all(b"KRGISO-OUTPUT-BEGIN\r\n10.77.0.150\r\n10.77.0.151\r\nKRGISO-OUTPUT-END\r\nkrg@node1:~$ ")
                .unwrap();
        });
        let until = Instant::now() + Duration::from_secs(20);
        console.login("krg", "s3cret", until).unwrap();
        let out = console.run("ls /srv", until).unwrap();
        assert_eq!(out, "10.77.0.150\n10.77.0.151");
        guest.join().unwrap();
    }
}
