//! Fetching sources against a server on 127.0.0.1 that the tests start,
//! serving bytes the tests make.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{refused_url, Route, TestServer};
use xtask::bytes::sha256_of;
use xtask::fetch::{fetch, Cache, FetchOptions, SourcesLock};
use xtask::profile::Source;

/// Bytes that look like a tarball to nobody: enough to drop halfway through.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    xtask::bytes::sha256_hex(bytes)
}

fn quick() -> FetchOptions {
    FetchOptions {
        attempts: 3,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        ..FetchOptions::default()
    }
}

fn source(file: &str, sha256: Option<&str>, urls: Vec<String>) -> Source {
    Source {
        name: "src".into(),
        file: file.into(),
        sha256: sha256.map(str::to_owned),
        urls,
    }
}

fn one(src: &Source) -> &[Source] {
    std::slice::from_ref(src)
}

struct Setup {
    tmp: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn cache(&self) -> Cache {
        Cache::new(&self.tmp.path().join("downloads"))
    }
    fn lock(&self) -> SourcesLock {
        SourcesLock::load(&self.tmp.path().join("sources.lock")).unwrap()
    }
    fn cached(&self, file: &str) -> std::path::PathBuf {
        self.tmp.path().join("downloads").join(file)
    }
    fn rejected(&self) -> Vec<String> {
        names(&self.tmp.path().join("downloads/rejected"))
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_good_download_is_verified_and_cached_and_then_never_fetched_again() {
    let server = TestServer::start().unwrap();
    let body = payload(1, 300_000);
    server.route("/linux.tar.bz2", Route::file(&body));
    let s = Setup::new();
    let src = source(
        "linux.tar.bz2",
        Some(&sha(&body)),
        vec![server.url("/linux.tar.bz2")],
    );

    let got = fetch(one(&src), &mut s.lock(), &s.cache(), &quick()).unwrap();
    assert_eq!(got[0].sha256, sha(&body));
    assert_eq!(fs::read(s.cached("linux.tar.bz2")).unwrap(), body);
    assert!(!s.cached("linux.tar.bz2.part").exists());
    assert_eq!(server.seen().len(), 1);

    // With a verified cache, no connection at all, online or offline.
    fetch(one(&src), &mut s.lock(), &s.cache(), &quick()).unwrap();
    let offline = FetchOptions {
        offline: true,
        ..quick()
    };
    fetch(one(&src), &mut s.lock(), &s.cache(), &offline).unwrap();
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn a_wrong_checksum_is_rejected_and_the_next_mirror_used() {
    let server = TestServer::start().unwrap();
    let good = payload(2, 50_000);
    let mut evil = good.clone();
    evil[100] ^= 1;
    server.route("/a/k.tar.gz", Route::file(&evil));
    server.route("/b/k.tar.gz", Route::file(&good));
    let s = Setup::new();
    let src = source(
        "k.tar.gz",
        Some(&sha(&good)),
        vec![server.url("/a/k.tar.gz"), server.url("/b/k.tar.gz")],
    );

    fetch(one(&src), &mut s.lock(), &s.cache(), &quick()).unwrap();
    assert_eq!(fs::read(s.cached("k.tar.gz")).unwrap(), good);
    let rejected = s.rejected();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].starts_with("k.tar.gz."));
    let kept = fs::read(s.tmp.path().join("downloads/rejected").join(&rejected[0])).unwrap();
    assert_eq!(kept, evil);
}

#[test]
fn a_mirror_that_404s_or_refuses_is_skipped() {
    let server = TestServer::start().unwrap();
    let body = payload(3, 10_000);
    server.route("/good/x.tar.gz", Route::file(&body));
    let s = Setup::new();
    let urls = vec![
        refused_url().unwrap(),
        server.url("/missing/x.tar.gz"),
        server.url("/good/x.tar.gz"),
    ];
    let started = Instant::now();
    fetch(
        &[source("x.tar.gz", Some(&sha(&body)), urls)],
        &mut s.lock(),
        &s.cache(),
        &quick(),
    )
    .unwrap();
    assert_eq!(fs::read(s.cached("x.tar.gz")).unwrap(), body);
    // A 404 is final for that mirror: one request, no retries.
    let paths: Vec<String> = server.seen().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/missing/x.tar.gz", "/good/x.tar.gz"]);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let server = TestServer::start().unwrap();
    let body = payload(4, 400_000);
    server.route(
        "/big.tar.bz2",
        Route::File {
            body: body.clone(),
            ranges: true,
            drop_first: 1,
            drop_after: 150_000,
        },
    );
    let s = Setup::new();
    let src = source(
        "big.tar.bz2",
        Some(&sha(&body)),
        vec![server.url("/big.tar.bz2")],
    );
    fetch(one(&src), &mut s.lock(), &s.cache(), &quick()).unwrap();
    assert_eq!(fs::read(s.cached("big.tar.bz2")).unwrap(), body);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    let range = seen[1].range.clone().expect("the second request resumes");
    let from: usize = range
        .strip_prefix("bytes=")
        .unwrap()
        .strip_suffix('-')
        .unwrap()
        .parse()
        .unwrap();
    assert!(from > 0 && from <= 150_000, "{range}");
}

#[test]
fn a_server_without_range_support_restarts_from_zero() {
    let server = TestServer::start().unwrap();
    let body = payload(5, 200_000);
    server.route(
        "/f.tar.gz",
        Route::File {
            body: body.clone(),
            ranges: false,
            drop_first: 1,
            drop_after: 80_000,
        },
    );
    let s = Setup::new();
    fetch(
        &[source(
            "f.tar.gz",
            Some(&sha(&body)),
            vec![server.url("/f.tar.gz")],
        )],
        &mut s.lock(),
        &s.cache(),
        &quick(),
    )
    .unwrap();
    assert_eq!(fs::read(s.cached("f.tar.gz")).unwrap(), body);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].range.is_some(), "it asked to resume");
}

#[test]
fn a_silent_mirror_times_out_and_the_next_is_used() {
    let server = TestServer::start().unwrap();
    let body = payload(6, 1000);
    server.route("/silent/s.tar.gz", Route::Silent);
    server.route("/ok/s.tar.gz", Route::file(&body));
    let s = Setup::new();
    let opts = FetchOptions {
        attempts: 2,
        read_timeout: Duration::from_millis(700),
        ..quick()
    };
    let urls = vec![server.url("/silent/s.tar.gz"), server.url("/ok/s.tar.gz")];
    let started = Instant::now();
    fetch(
        &[source("s.tar.gz", Some(&sha(&body)), urls)],
        &mut s.lock(),
        &s.cache(),
        &opts,
    )
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let silent_tries = server
        .seen()
        .iter()
        .filter(|r| r.path.starts_with("/silent"))
        .count();
    assert_eq!(silent_tries, 2, "retried once, then moved on");
}

#[test]
fn when_every_mirror_fails_one_error_names_each_and_nothing_is_cached() {
    let server = TestServer::start().unwrap();
    let good = payload(7, 5000);
    server.route("/bad/z.tar.gz", Route::file(&payload(8, 5000)));
    let s = Setup::new();
    let urls = vec![
        refused_url().unwrap(),
        server.url("/gone/z.tar.gz"),
        server.url("/bad/z.tar.gz"),
    ];
    let err = fetch(
        &[source("z.tar.gz", Some(&sha(&good)), urls.clone())],
        &mut s.lock(),
        &s.cache(),
        &quick(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("could not get z.tar.gz from any of its 3 mirror(s):"),
        "{err}"
    );
    for url in &urls {
        assert!(err.contains(url.as_str()), "{url} not named:\n{err}");
    }
    assert!(
        err.contains("HTTP 404") && err.contains("wrong checksum"),
        "{err}"
    );
    assert!(!s.cached("z.tar.gz").exists());
    assert!(
        !s.cached("z.tar.gz.part").exists(),
        "the rejected download stays in rejected/ only"
    );
}

#[test]
fn offline_without_the_file_lists_what_is_missing_and_opens_no_connection() {
    let server = TestServer::start().unwrap();
    let body = payload(9, 1000);
    server.route("/o.tar.gz", Route::file(&body));
    let s = Setup::new();
    let offline = FetchOptions {
        offline: true,
        ..quick()
    };
    let src = source("o.tar.gz", Some(&sha(&body)), vec![server.url("/o.tar.gz")]);
    let err = fetch(one(&src), &mut s.lock(), &s.cache(), &offline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--offline")
            && err.contains("o.tar.gz")
            && err.contains(&server.url("/o.tar.gz")),
        "{err}"
    );
    assert!(server.seen().is_empty());

    // A corrupt cached copy does not count as there.
    fs::create_dir_all(s.cached("x").parent().unwrap()).unwrap();
    fs::write(s.cached("o.tar.gz"), b"garbage").unwrap();
    assert!(fetch(one(&src), &mut s.lock(), &s.cache(), &offline).is_err());
    assert_eq!(s.rejected().len(), 1);
    assert!(server.seen().is_empty());

    fetch(one(&src), &mut s.lock(), &s.cache(), &quick()).unwrap();
    fetch(one(&src), &mut s.lock(), &s.cache(), &offline).unwrap();
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn a_corrupted_cache_is_caught_before_use_and_fetched_again() {
    let server = TestServer::start().unwrap();
    let body = payload(10, 20_000);
    server.route("/c.tar.gz", Route::file(&body));
    let s = Setup::new();
    let src = source("c.tar.gz", Some(&sha(&body)), vec![server.url("/c.tar.gz")]);
    fetch(one(&src), &mut s.lock(), &s.cache(), &quick()).unwrap();
    let mut bytes = fs::read(s.cached("c.tar.gz")).unwrap();
    bytes[5] ^= 0xff;
    fs::write(s.cached("c.tar.gz"), &bytes).unwrap();
    fetch(one(&src), &mut s.lock(), &s.cache(), &quick()).unwrap();
    assert_eq!(sha256_of(&s.cached("c.tar.gz")).unwrap(), sha(&body));
    assert_eq!(s.rejected().len(), 1);
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn an_unpinned_source_is_shown_then_locked_on_request_then_enforced() {
    let server = TestServer::start().unwrap();
    let body = payload(11, 30_000);
    server.route("/kerrighed.tar.gz", Route::file(&body));
    let s = Setup::new();
    let src = source(
        "kerrighed.tar.gz",
        None,
        vec![server.url("/kerrighed.tar.gz")],
    );

    // No pin: download, show the sha256 and the URL, do not use the file.
    let err = fetch(one(&src), &mut s.lock(), &s.cache(), &quick())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no sha256 pin"), "{err}");
    assert!(
        err.contains(&sha(&body)) && err.contains(&server.url("/kerrighed.tar.gz")),
        "{err}"
    );
    assert!(err.contains("(30000 bytes)"), "the size is shown: {err}");
    // Pinning is offered only after the comparison.
    let compare = err.find("compare each sha256").expect("asks to compare");
    assert!(
        err.find("--lock-new").is_some_and(|at| at > compare),
        "{err}"
    );
    assert!(!s.cached("kerrighed.tar.gz").exists());
    assert_eq!(s.lock().get("kerrighed.tar.gz"), None);

    // --lock-new pins exactly the bytes whose sum was shown: no new download.
    let lock_new = FetchOptions {
        lock_new: true,
        ..quick()
    };
    let got = fetch(one(&src), &mut s.lock(), &s.cache(), &lock_new).unwrap();
    assert_eq!(got[0].sha256, sha(&body));
    assert_eq!(s.lock().get("kerrighed.tar.gz"), Some(sha(&body).as_str()));
    assert_eq!(server.seen().len(), 1);

    // From then on the pin is enforced: a different file is refused.
    fs::remove_file(s.cached("kerrighed.tar.gz")).unwrap();
    server.route("/kerrighed.tar.gz", Route::file(&payload(12, 30_000)));
    let err = fetch(one(&src), &mut s.lock(), &s.cache(), &lock_new)
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong checksum"), "{err}");
    assert!(!s.cached("kerrighed.tar.gz").exists());
    assert_eq!(
        s.lock().get("kerrighed.tar.gz"),
        Some(sha(&body).as_str()),
        "the lock is not rewritten"
    );
}

/// `--lock-new` never pins bytes nobody was shown: on a fresh cache it
/// downloads, shows and stops like a plain fetch; the next `--lock-new`
/// pins those very bytes without downloading again.
#[test]
fn lock_new_on_a_fresh_cache_shows_first_and_pins_only_on_the_next_run() {
    let server = TestServer::start().unwrap();
    let body = payload(13, 3000);
    server.route("/n.tar.gz", Route::file(&body));
    let s = Setup::new();
    let lock_new = FetchOptions {
        lock_new: true,
        ..quick()
    };
    let src = [source("n.tar.gz", None, vec![server.url("/n.tar.gz")])];
    let err = fetch(&src, &mut s.lock(), &s.cache(), &lock_new)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&sha(&body)) && err.contains("(3000 bytes)"),
        "{err}"
    );
    assert_eq!(s.lock().get("n.tar.gz"), None, "pinned unseen bytes");
    assert!(!s.cached("n.tar.gz").exists());
    fetch(&src, &mut s.lock(), &s.cache(), &lock_new).unwrap();
    assert_eq!(s.lock().get("n.tar.gz"), Some(sha(&body).as_str()));
    assert_eq!(fs::read(s.cached("n.tar.gz")).unwrap(), body);
    assert_eq!(server.seen().len(), 1, "downloaded again");
}

/// A pre-download directory holding `file` with `bytes`.
fn predownload(s: &Setup, file: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = s.tmp.path().join("predownload");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(file), bytes).unwrap();
    dir
}

fn with_sources_dir(dir: &Path, offline: bool) -> FetchOptions {
    FetchOptions {
        offline,
        sources_dir: Some(dir.to_owned()),
        ..quick()
    }
}

#[test]
fn a_pre_download_dir_is_tried_first_and_works_offline() {
    let server = TestServer::start().unwrap();
    let body = payload(11, 200_000);
    server.route("/p.tar.bz2", Route::file(&body));
    let s = Setup::new();
    let dir = predownload(&s, "p.tar.bz2", &body);
    let src = source(
        "p.tar.bz2",
        Some(&sha(&body)),
        vec![server.url("/p.tar.bz2")],
    );

    let got = fetch(
        one(&src),
        &mut s.lock(),
        &s.cache(),
        &with_sources_dir(&dir, true),
    )
    .unwrap();
    assert_eq!(got[0].sha256, sha(&body));
    assert_eq!(fs::read(s.cached("p.tar.bz2")).unwrap(), body);
    assert!(!s.cached("p.tar.bz2.part").exists());
    // The directory is the user's: its file stays where it was.
    assert_eq!(fs::read(dir.join("p.tar.bz2")).unwrap(), body);
    assert!(
        server.seen().is_empty(),
        "a mirror was asked although the file was at hand"
    );
}

#[test]
fn a_wrong_file_in_the_pre_download_dir_is_refused_like_a_bad_download() {
    let server = TestServer::start().unwrap();
    let good = payload(12, 60_000);
    let mut evil = good.clone();
    evil[7] ^= 0x40;
    server.route("/w.tar.gz", Route::file(&good));
    let s = Setup::new();
    let dir = predownload(&s, "w.tar.gz", &evil);
    let src = source("w.tar.gz", Some(&sha(&good)), vec![server.url("/w.tar.gz")]);

    // Offline, the wrong copy is all there is: nothing is cached.
    let err = fetch(
        one(&src),
        &mut s.lock(),
        &s.cache(),
        &with_sources_dir(&dir, true),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("w.tar.gz") && err.contains(&dir.display().to_string()),
        "{err}"
    );
    assert!(!s.cached("w.tar.gz").exists());
    assert!(!s.cached("w.tar.gz.part").exists());

    // Online, the mirror gives the right bytes; the wrong copy is left alone.
    fetch(
        one(&src),
        &mut s.lock(),
        &s.cache(),
        &with_sources_dir(&dir, false),
    )
    .unwrap();
    assert_eq!(fs::read(s.cached("w.tar.gz")).unwrap(), good);
    assert_eq!(server.seen().len(), 1);
    assert_eq!(fs::read(dir.join("w.tar.gz")).unwrap(), evil);
}

#[test]
fn an_unpinned_file_from_the_pre_download_dir_still_needs_lock_new() {
    let s = Setup::new();
    let body = payload(13, 5_000);
    let dir = predownload(&s, "u.tar.gz", &body);
    let src = source("u.tar.gz", None, vec![refused_url().unwrap()]);
    let err = fetch(
        one(&src),
        &mut s.lock(),
        &s.cache(),
        &with_sources_dir(&dir, true),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no sha256 pin") && err.contains(&sha(&body)),
        "{err}"
    );
    assert!(!s.cached("u.tar.gz").exists());
    let lock_new = FetchOptions {
        lock_new: true,
        ..with_sources_dir(&dir, true)
    };
    fetch(one(&src), &mut s.lock(), &s.cache(), &lock_new).unwrap();
    assert_eq!(s.lock().get("u.tar.gz"), Some(sha(&body).as_str()));
}
