//! Getting the sources: each `[[sources]]` file from its mirrors, in order,
//! into the download cache, verified against its sha256 pin. Only a file
//! whose sha256 matches is ever renamed into the cache; a cached file is
//! verified again before every use. A pre-download directory (like
//! Buildroot's `BR2_DL_DIR`), when given, is tried before the mirrors, and
//! its files are held to the same pins.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::bytes::{hash_reader, human_bytes, sha256_of};
use crate::files;
use crate::interrupt::{self, Interrupted};
use crate::profile::Source;
use crate::shell;

/// The environment variable that names the pre-download directory (the
/// `--sources-dir` option reads it too).
pub(crate) const SOURCES_DIR_ENV: &str = "KRGISO_SOURCES_DIR";

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Open no connection: every source must be in the cache already.
    pub offline: bool,
    /// Pin a source that has no sha256 yet, in `sources.lock`.
    pub lock_new: bool,
    /// Tries per mirror before moving to the next (a dropped connection resumes).
    pub attempts: u32,
    /// Wait before the second try; doubles after each.
    pub backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while waiting for headers or for the next bytes.
    pub read_timeout: Duration,
    /// A directory of source tarballs tried before the mirrors (and the
    /// only place besides the cache that `offline` may take them from).
    pub sources_dir: Option<PathBuf>,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            offline: false,
            lock_new: false,
            attempts: 3,
            backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            sources_dir: None,
        }
    }
}

/// A source in the cache whose sha256 matched its pin just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub sha256: String,
}

/// `sources.lock`: the sha256 of sources whose profile entry gives none,
/// written on the first verified fetch (`--lock-new`) and enforced after.
#[derive(Debug, Clone)]
pub struct SourcesLock {
    pub(crate) path: PathBuf,
    pins: BTreeMap<String, String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    sha256: BTreeMap<String, String>,
}

impl SourcesLock {
    /// The lock file that goes with a profile: `sources.lock` beside it.
    pub(crate) fn beside(profile: &Path) -> PathBuf {
        profile
            .parent()
            .unwrap_or(Path::new("."))
            .join("sources.lock")
    }

    /// The pins of a profile's sources, from the `sources.lock` beside it.
    pub(crate) fn of_profile(profile: &Path) -> Result<SourcesLock> {
        SourcesLock::load(&SourcesLock::beside(profile))
    }

    /// Reads the lock; a missing file is an empty lock.
    pub fn load(path: &Path) -> Result<SourcesLock> {
        let pins = match fs::read_to_string(path) {
            Ok(text) => {
                let file: LockFile = toml::from_str(&text)
                    .with_context(|| format!("{} is not a valid lock file", path.display()))?;
                for (name, sum) in &file.sha256 {
                    if !is_sha256(sum) {
                        bail!(
                            "{}: the sha256 of {name} is not 64 lowercase hex digits",
                            path.display()
                        );
                    }
                }
                file.sha256
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(SourcesLock {
            path: path.to_owned(),
            pins,
        })
    }

    pub fn get(&self, file: &str) -> Option<&str> {
        self.pins.get(file).map(String::as_str)
    }

    fn pin(&mut self, file: &str, sha256: &str) -> Result<()> {
        self.pins.insert(file.to_owned(), sha256.to_owned());
        let body = toml::to_string(&LockFile {
            sha256: self.pins.clone(),
        })
        .context("encoding sources.lock")?;
        let text = format!(
            "# krgiso sources.lock: sha256 pins for sources whose profile entry has none.\n\
             # Written by `cargo xtask fetch --lock-new` (the bytes an earlier fetch showed); commit it.\n\
             # Every fetch enforces it.\n\n{body}"
        );
        files::write_atomic(&self.path, text.as_bytes())
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The pin a source is held to: its profile entry's, else the lock's.
pub(crate) fn pin_of<'a>(source: &'a Source, lock: &'a SourcesLock) -> Option<&'a str> {
    source.sha256.as_deref().or_else(|| lock.get(&source.file))
}

/// The download cache: verified files, `.part` downloads, `rejected/`, `unpinned/`.
pub struct Cache {
    pub(crate) dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_owned(),
        }
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn part(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.part"))
    }
    fn unpinned(&self, name: &str) -> PathBuf {
        self.dir.join("unpinned").join(name)
    }

    /// Moves a bad file out of the way, keeping it for inspection.
    fn reject(&self, path: &Path, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join("rejected");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dest = dir.join(format!("{name}.{stamp}"));
        fs::rename(path, &dest)
            .with_context(|| format!("moving {} to {}", path.display(), dest.display()))?;
        Ok(dest)
    }
}

/// Gets every source into the cache and verifies it. Opens no connection
/// when every source is already cached and verifies.
pub fn fetch(
    sources: &[Source],
    lock: &mut SourcesLock,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Vec<Verified>> {
    fs::create_dir_all(&cache.dir)
        .with_context(|| format!("creating the download cache {}", cache.dir.display()))?;
    let mut verified = Vec::new();
    let mut offline_missing = Vec::new();
    let mut unpinned = Vec::new();
    let mut client = None;
    for source in sources {
        interrupt::check()?;
        let dest = cache.file(&source.file);
        let pin = pin_of(source, lock).map(str::to_owned);
        // Where a download waits for its pin.
        let held = cache.unpinned(&source.file);
        let verified_as = |sha256: String| Verified {
            name: source.name.clone(),
            path: dest.clone(),
            sha256,
        };

        if let Some(pin) = &pin {
            if dest.exists() {
                let got = sha256_of(&dest)?;
                if &got == pin {
                    verified.push(verified_as(got));
                    continue;
                }
                let moved = cache.reject(&dest, &source.file)?;
                eprintln!(
                    "warning: the cached {} is corrupt (expected sha256 {pin}, got {got}); moved it to {}",
                    source.file,
                    moved.display()
                );
            }
        } else if opts.lock_new && held.exists() {
            // Downloaded by an earlier fetch that stopped for want of a pin:
            // lock exactly the bytes whose sha256 was shown then.
            let sha = sha256_of(&held)?;
            pin_into_cache(lock, source, &held, &dest, &sha)?;
            verified.push(verified_as(sha));
            continue;
        }

        let local = match &opts.sources_dir {
            Some(dir) => take_local(dir, source, pin.as_deref(), cache)?,
            None => None,
        };
        let (part, sha, url) = match local {
            Some(got) => got,
            None if opts.offline => {
                offline_missing.push(source);
                continue;
            }
            None => {
                if client.is_none() {
                    client = Some(http_client(opts)?);
                }
                let http = client.as_ref().context("internal: no HTTP client")?;
                download(http, source, pin.as_deref(), cache, opts)?
            }
        };
        if pin.is_some() {
            admit(&part, &dest)?;
            verified.push(verified_as(sha));
            continue;
        }
        // No pin: the bytes wait aside until a person has compared their
        // sha256 with a copy they trust. Even `--lock-new` pins only bytes
        // an earlier fetch has shown, never what it has just downloaded.
        fs::create_dir_all(held.parent().unwrap_or(&cache.dir))?;
        fs::rename(&part, &held).with_context(|| format!("moving {} aside", part.display()))?;
        let size = fs::metadata(&held).map(|m| m.len()).unwrap_or(0);
        unpinned.push(Unpinned {
            source,
            sha,
            size,
            url,
            held,
        });
    }

    if !offline_missing.is_empty() {
        let mut msg = String::from(
            "--offline, but these sources are not in the download cache (or do not verify):",
        );
        for s in &offline_missing {
            msg.push_str(&format!(
                "\n  {} — get it from {}",
                s.file,
                s.urls.join(" or ")
            ));
        }
        let pre = match &opts.sources_dir {
            Some(dir) => format!(" or in the pre-download directory {}", dir.display()),
            None => " or in a pre-download directory (--sources-dir DIR)".to_owned(),
        };
        msg.push_str(&format!(
            "\nrun `cargo xtask fetch` where there is internet, or put the files in {}{pre}",
            cache.dir.display()
        ));
        bail!(msg);
    }
    if !unpinned.is_empty() {
        bail!(unpinned_message(&unpinned, &lock.path));
    }
    Ok(verified)
}

/// A source downloaded without a pin, held aside in `unpinned/`.
struct Unpinned<'a> {
    source: &'a Source,
    sha: String,
    size: u64,
    url: String,
    held: PathBuf,
}

/// What a user is shown of bytes nobody has vouched for yet, and the only
/// order in which pinning them is safe: compare first, then pin.
fn unpinned_message(unpinned: &[Unpinned], lock: &Path) -> String {
    let mut msg = String::from(
        "not used: these sources have no sha256 pin yet, neither in the profile nor in the lock file; \
they were downloaded and set aside, and nothing was built from them:",
    );
    for u in unpinned {
        msg.push_str(&format!(
            "\n  {}\n    sha256 {}\n    size   {} ({} bytes)\n    from   {}\n    kept   {}",
            u.source.file,
            u.sha,
            human_bytes(u.size),
            u.size,
            u.url,
            u.held.display()
        ));
    }
    msg.push_str(&format!(
        "\nfirst compare each sha256 with one from a source you trust (a checksum list published with \
the release, a copy you already have); a download you cannot check is not worth building from. \
Only if they match, pin it: add `sha256 = \"...\"` to its [[sources]] entry in the profile, or run \
`cargo xtask fetch --lock-new`, which pins exactly the bytes shown above in {} (it downloads nothing)",
        lock.display()
    ));
    msg
}

/// A source's file from the pre-download directory, copied to its `.part`
/// in the cache and hashed on the way: `(part, sha256, where it came
/// from)`. A file that does not match its pin is refused like a bad
/// download (said, not used; it is left where it is, the directory is the
/// user's); a missing one is simply not there.
fn take_local(
    dir: &Path,
    source: &Source,
    pin: Option<&str>,
    cache: &Cache,
) -> Result<Option<(PathBuf, String, String)>> {
    let path = dir.join(&source.file);
    let mut input = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let part = cache.part(&source.file);
    let mut out = File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        interrupt::check()?;
        let n = input
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {} (is the disk full?)", part.display()))?;
    }
    out.sync_all()
        .with_context(|| format!("writing {}", part.display()))?;
    let sha = hex::encode(hasher.finalize());
    if let Some(pin) = pin.filter(|p| *p != sha) {
        fs::remove_file(&part).with_context(|| format!("removing {}", part.display()))?;
        eprintln!(
            "warning: {} does not match its pin (expected sha256 {pin}, got {sha}): not used",
            path.display()
        );
        return Ok(None);
    }
    eprintln!("fetch: {} from {}", source.file, dir.display());
    Ok(Some((part, sha, path.display().to_string())))
}

/// Moves a verified file into the cache under its own name.
fn admit(file: &Path, dest: &Path) -> Result<()> {
    fs::rename(file, dest).with_context(|| format!("moving {} into the cache", file.display()))
}

/// Pins `sha` for `source` in the lock, then admits the file that has it:
/// the bytes an earlier fetch set aside and showed.
fn pin_into_cache(
    lock: &mut SourcesLock,
    source: &Source,
    file: &Path,
    dest: &Path,
    sha: &str,
) -> Result<()> {
    lock.pin(&source.file, sha)?;
    admit(file, dest)?;
    eprintln!(
        "pinned {} sha256 {sha} (the bytes shown by the last fetch) in {}",
        source.file,
        lock.path.display()
    );
    Ok(())
}

fn http_client(opts: &FetchOptions) -> Result<reqwest::blocking::Client> {
    // reqwest is built without a bundled crypto provider: use rustls' ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.read_timeout)
        .user_agent(concat!("krgiso/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("setting up the HTTP client")
}

/// Whether a Debian mirror has a suite: its `dists/SUITE/Release` answers
/// (on disk for a `file://` mirror). Asked before a build starts, so a dead
/// mirror or a misspelt suite stops it in seconds, not after other work.
/// `Err` says why, in a few words.
pub(crate) fn check_mirror(mirror: &str, suite: &str, timeout: Duration) -> Result<(), String> {
    let base = mirror.trim_end_matches('/');
    if let Some(path) = base.strip_prefix("file://") {
        let release = Path::new(path).join("dists").join(suite).join("Release");
        return if release.is_file() {
            Ok(())
        } else if Path::new(path).is_dir() {
            Err(format!(
                "has no suite `{suite}` ({} is missing)",
                release.display()
            ))
        } else {
            Err(format!("is not there ({path} is not a directory)"))
        };
    }
    let url = format!("{base}/dists/{suite}/Release");
    let opts = FetchOptions {
        connect_timeout: timeout,
        read_timeout: timeout,
        ..FetchOptions::default()
    };
    let http = http_client(&opts).map_err(|e| format!("{e:#}"))?;
    match http.get(&url).send() {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
            Err(format!("has no suite `{suite}` (404 for {url})"))
        }
        Ok(r) => Err(format!("answers {} for {url}", r.status())),
        Err(e) => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                why = inner.to_string();
                source = inner.source();
            }
            Err(format!("does not answer ({why})"))
        }
    }
}

/// Why one try at one mirror failed.
enum Failure {
    /// Worth another try at the same mirror (resuming what we have).
    Retry(String),
    /// This mirror will not do: go to the next.
    NextMirror(String),
}

/// Tries each mirror in order; returns the completed `.part`, its sha256
/// and the URL it came from. A pinned download that does not match is
/// rejected and the next mirror tried.
fn download(
    http: &reqwest::blocking::Client,
    source: &Source,
    pin: Option<&str>,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<(PathBuf, String, String)> {
    let part = cache.part(&source.file);
    let mut reasons = Vec::new();
    for url in &source.urls {
        let mut wait = opts.backoff;
        let mut attempt = 1;
        loop {
            match fetch_once(http, url, &part, &source.file)? {
                Ok(sha) => {
                    if pin.is_none_or(|p| p == sha) {
                        return Ok((part, sha, url.clone()));
                    }
                    let moved = cache.reject(&part, &source.file)?;
                    let why = format!(
                        "wrong checksum: expected sha256 {}, got {sha}; kept in {}",
                        pin.unwrap_or_default(),
                        moved.display()
                    );
                    eprintln!("fetch: {url}: {why}");
                    reasons.push(format!("{url}: {why}"));
                    break;
                }
                Err(Failure::Retry(why)) if attempt < opts.attempts => {
                    eprintln!(
                        "fetch: {url}: {why}; try {}/{} in {:.0?}",
                        attempt + 1,
                        opts.attempts,
                        wait
                    );
                    sleep_unless_interrupted(wait)?;
                    wait *= 2;
                    attempt += 1;
                }
                Err(Failure::Retry(why) | Failure::NextMirror(why)) => {
                    eprintln!("fetch: {url}: {why}");
                    reasons.push(format!("{url}: {why}"));
                    break;
                }
            }
        }
    }
    let mut msg = format!(
        "could not get {} from any of its {} mirror(s):",
        source.file,
        source.urls.len()
    );
    for r in &reasons {
        msg.push_str(&format!("\n  {r}"));
    }
    msg.push_str(&format!(
        "\nwhere these hosts cannot be reached, put {} in a directory and name it with --sources-dir DIR \
(or {SOURCES_DIR_ENV}=DIR), or copy it into the download cache {}; or add a mirror that works to \
`urls` in the profile's [[sources]] entry named `{}`",
        source.file,
        cache.dir.display(),
        source.name,
    ));
    bail!(msg)
}

fn sleep_unless_interrupted(d: Duration) -> Result<(), Interrupted> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

/// One request: resumes `part` with a Range request when it holds bytes.
/// The outer Result is for what must stop everything (Ctrl-C, a full disk).
fn fetch_once(
    http: &reqwest::blocking::Client,
    url: &str,
    part: &Path,
    file: &str,
) -> Result<Result<String, Failure>> {
    use reqwest::StatusCode;
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = http.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = match request.send() {
        Ok(r) => r,
        Err(e) => return Ok(Err(classify(&e))),
    };
    let status = response.status();
    let resume = match status {
        StatusCode::PARTIAL_CONTENT if have > 0 => {
            let range = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {have}-")) {
                fs::remove_file(part).ok();
                return Ok(Err(Failure::Retry(format!(
                    "the server resumed at the wrong place ({range})"
                ))));
            }
            true
        }
        StatusCode::OK => {
            if have > 0 {
                eprintln!(
                    "fetch: {url}: the server ignores Range; starting {file} again from zero"
                );
            }
            false
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            fs::remove_file(part).ok();
            return Ok(Err(Failure::Retry(
                "the partial download does not fit the file; starting again".into(),
            )));
        }
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            return Ok(Err(Failure::Retry(format!("HTTP {s}"))));
        }
        s => return Ok(Err(Failure::NextMirror(format!("HTTP {s}")))),
    };

    let mut hasher = Sha256::new();
    let mut out = if resume {
        hash_reader(&mut hasher, part)?;
        OpenOptions::new().append(true).open(part)
    } else {
        File::create(part)
    }
    .with_context(|| format!("opening {}", part.display()))?;
    let offset = if resume { have } else { 0 };
    let expected_len = response.content_length().map(|n| n + offset);
    let bar = DownloadBar::new(file, url, expected_len, offset);

    let mut buf = vec![0u8; 1 << 16];
    let mut received = offset;
    let read_error = loop {
        if interrupt::is_interrupted() {
            let _ = out.sync_all();
            bar.finish(false);
            return Err(Interrupted.into());
        }
        match response.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                out.write_all(&buf[..n])
                    .with_context(|| format!("writing {} (is the disk full?)", part.display()))?;
                hasher.update(&buf[..n]);
                received += n as u64;
                bar.set(received);
            }
            Err(e) => break Some(e),
        }
    };
    out.sync_all()
        .with_context(|| format!("writing {}", part.display()))?;
    let short = expected_len.is_some_and(|len| received < len);
    if read_error.is_some() || short {
        bar.finish(false);
        let why = match read_error {
            Some(e) => format!("connection lost after {} ({e})", human_bytes(received)),
            None => format!(
                "connection closed after {} of {}",
                human_bytes(received),
                human_bytes(expected_len.unwrap_or(0))
            ),
        };
        return Ok(Err(Failure::Retry(why)));
    }
    bar.finish(true);
    Ok(Ok(hex::encode(hasher.finalize())))
}

/// A mirror we cannot reach (DNS, refused, connect timeout) is skipped; a
/// transfer that broke off is resumed at the same mirror.
fn classify(e: &reqwest::Error) -> Failure {
    let mut why = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        why = format!("{why}: {s}");
        source = s.source();
    }
    if e.is_connect() {
        Failure::NextMirror(why)
    } else if e.is_timeout() || e.is_request() || e.is_body() {
        Failure::Retry(why)
    } else {
        Failure::NextMirror(why)
    }
}

/// Bytes, rate and ETA on a terminal; a start and an end line elsewhere.
struct DownloadBar {
    bar: Option<ProgressBar>,
    started: Instant,
    offset: u64,
    label: String,
}

impl DownloadBar {
    fn new(file: &str, url: &str, total: Option<u64>, offset: u64) -> DownloadBar {
        let from = if offset > 0 {
            format!(" (resuming at {})", human_bytes(offset))
        } else {
            String::new()
        };
        let label = format!("{file} from {url}{from}");
        let bar = shell::byte_bar(total, file.to_owned());
        if let Some(bar) = &bar {
            bar.set_position(offset);
            bar.reset_eta();
        }
        if bar.is_none() {
            eprintln!("fetch: {label}");
        }
        DownloadBar {
            bar,
            started: Instant::now(),
            offset,
            label,
        }
    }

    fn set(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    fn finish(&self, ok: bool) {
        let total = self.bar.as_ref().map(|b| b.position());
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if ok {
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let got = total.unwrap_or(0).saturating_sub(self.offset);
            let rate = if total.is_some() {
                format!(", {}/s", human_bytes((got as f64 / secs) as u64))
            } else {
                String::new()
            };
            eprintln!("fetch: got {} in {secs:.1}s{rate}", self.label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mirror with the suite, one without, one that refuses, one that
    /// never answers, and file:// ones: each said in its own words.
    #[test]
    fn a_mirror_is_asked_for_its_suite_before_a_build() {
        use crate::testsuite::http::{refused_url, Route, TestServer};
        let server = TestServer::start().unwrap();
        server.route(
            "/debian/dists/bookworm/Release",
            Route::file(b"Suite: bookworm\n"),
        );
        server.route("/silent/dists/bookworm/Release", Route::Silent);
        let t = Duration::from_secs(2);
        assert_eq!(check_mirror(&server.url("/debian/"), "bookworm", t), Ok(()));
        let no_suite = check_mirror(&server.url("/debian"), "bookwurm", t).unwrap_err();
        assert!(no_suite.contains("has no suite `bookwurm`"), "{no_suite}");
        let refused = check_mirror(&refused_url().unwrap(), "bookworm", t).unwrap_err();
        assert!(refused.starts_with("does not answer"), "{refused}");
        let started = Instant::now();
        let silent = check_mirror(&server.url("/silent"), "bookworm", t).unwrap_err();
        assert!(silent.starts_with("does not answer"), "{silent}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("dists/bookworm")).unwrap();
        fs::write(tmp.path().join("dists/bookworm/Release"), "x").unwrap();
        let local = format!("file://{}", tmp.path().display());
        assert_eq!(check_mirror(&local, "bookworm", t), Ok(()));
        assert!(check_mirror(&local, "trixie", t)
            .unwrap_err()
            .contains("has no suite"));
        assert!(check_mirror("file:///nonexistent/krgiso", "bookworm", t)
            .unwrap_err()
            .contains("is not there"));
    }

    #[test]
    fn lock_file_round_trip_and_refuses_bad_sums() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sources.lock");
        let mut lock = SourcesLock::load(&path).unwrap();
        assert_eq!(lock.get("a.tar.gz"), None);
        let sum = "ab".repeat(32);
        lock.pin("a.tar.gz", &sum).unwrap();
        let again = SourcesLock::load(&path).unwrap();
        assert_eq!(again.get("a.tar.gz"), Some(sum.as_str()));
        assert!(fs::read_to_string(&path)
            .unwrap()
            .starts_with("# krgiso sources.lock"));

        fs::write(&path, "[sha256]\n\"a.tar.gz\" = \"XYZ\"\n").unwrap();
        let err = SourcesLock::load(&path).unwrap_err().to_string();
        assert!(err.contains("not 64 lowercase hex digits"), "{err}");
    }
}
