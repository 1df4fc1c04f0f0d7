//! The command line, run as a user would: the built binary.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::snapshot;

const COMMANDS: &[&str] = &[
    "build",
    "packages",
    "kernel",
    "node1",
    "allbutkernel",
    "iso",
    "fetch",
    "status",
    "clean",
    "qemu",
    "usb",
    "test",
];

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("running xtask")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// xtask with `--build-dir DIR/build`, then `args`; not run yet.
fn command_in(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.arg("--build-dir").arg(dir.join("build")).args(args);
    command
}

/// xtask run with `--build-dir DIR/build`, then `args`.
fn xtask_in(dir: &Path, args: &[&str]) -> Output {
    command_in(dir, args).output().expect("running xtask")
}

#[test]
fn every_command_has_help() {
    let (top, _) = text(&xtask(&["--help"]));
    for cmd in COMMANDS {
        assert!(
            top.contains(&format!("\n  {cmd} ")),
            "top-level help lacks {cmd}:\n{top}"
        );
        let out = xtask(&[cmd, "--help"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{cmd} --help: {stderr}");
        assert!(
            stdout.contains(&format!("Usage: cargo xtask {cmd}")),
            "{cmd}:\n{stdout}"
        );
        for global in [
            "--profile <NAME|PATH>",
            "--build-dir <DIR>",
            "--offline",
            "--sources-dir <DIR>",
            "--dry-run",
            "--force",
            "--verbose",
        ] {
            assert!(stdout.contains(global), "{cmd} --help lacks {global}");
        }
    }
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let project = xtask::project_root();
    let before = (
        snapshot(tmp.path()),
        snapshot(&project.join("profiles")),
        snapshot(&project.join("overlay")),
    );
    for profile in ["kerrighed-2.4.4", "kerrighed-2.4.1-lenny", "smoke"] {
        let out = xtask_in(tmp.path(), &["--profile", profile, "--dry-run", "build"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        for stage in ["packages", "kernel", "node1", "iso"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.split_whitespace().collect::<Vec<_>>()[..]
                        == [stage, "run", "never", "built"]),
                "{stage} not planned:\n{stdout}"
            );
        }
        assert!(stdout.contains("nothing was run (--dry-run)"), "{stdout}");
    }
    assert!(xtask_in(tmp.path(), &["--dry-run", "clean", "--all"])
        .status
        .success());
    let after = (
        snapshot(tmp.path()),
        snapshot(&project.join("profiles")),
        snapshot(&project.join("overlay")),
    );
    assert_eq!(before, after);
}

#[test]
fn dry_run_of_iso_without_a_build_says_what_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = xtask_in(tmp.path(), &["--dry-run", "iso"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.contains("blocked"), "{stdout}");
    assert!(
        stderr.contains("never built: run `cargo xtask build` first"),
        "{stderr}"
    );
}

/// `xtask --build-dir TMP/build --profile smoke ARGS` with no image built:
/// one line saying where it looked and what to run.
fn refused_for_want_of_an_image(tmp: &Path, command: &[&str]) {
    let out = xtask_in(tmp, &[&["--profile", "smoke"], command].concat());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: no image at {}: run `cargo xtask build` (or `cargo xtask iso`)",
            tmp.join("build/out/krgiso-smoke.iso").display()
        )
    );
}

#[test]
fn qemu_without_an_image_says_to_build_one_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    refused_for_want_of_an_image(tmp.path(), &["qemu", "--nodes", "2"]);
}

#[test]
fn usb_without_an_image_says_to_build_one_and_refuses_a_character_device() {
    let tmp = tempfile::tempdir().unwrap();
    refused_for_want_of_an_image(tmp.path(), &["usb", "/dev/null"]);
    let image = tmp.path().join("build/out/krgiso-smoke.iso");

    // With an image, /dev/null is refused before anything is written.
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let sum = "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7";
    std::fs::write(
        image.with_extension("iso.sha256"),
        format!("{sum}  krgiso-smoke.iso\n"),
    )
    .unwrap();
    let out = xtask_in(tmp.path(), &["--profile", "smoke", "usb", "/dev/null"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to write to /dev/null:")
            && stderr.contains("/dev/null is not a block device (not a disk)"),
        "{stderr}"
    );
}

#[test]
fn a_stage_whose_inputs_were_never_built_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = xtask_in(tmp.path(), &["--profile", "smoke", "kernel"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: kernel needs what packages made, which was never built: run `cargo xtask build` first"
    );
    assert!(!tmp.path().join("build/stamps").exists());
}

#[test]
fn a_bad_profile_is_reported_with_file_key_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(xtask::project_root().join("profiles/smoke.toml")).unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, good.replace("nbmin = 2", "nbmin = \"two\"")).unwrap();
    let line = good.lines().position(|l| l == "nbmin = 2").unwrap() + 1;
    let out = xtask(&["--profile", bad.to_str().unwrap(), "status"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "error: profile {}, line {line}, key `cluster.nbmin`: invalid type",
        bad.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");

    let out = xtask(&["--profile", "no-such-profile", "status"]);
    assert!(text(&out).1.contains("profile `no-such-profile` not found"));
}

#[test]
fn status_of_a_fresh_build_dir_lists_every_stage_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = xtask_in(tmp.path(), &["status"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for stage in ["packages", "kernel", "node1", "iso"] {
        assert!(
            stdout.contains(&format!("  {stage:<9} missing  never built")),
            "{stdout}"
        );
    }
    assert!(
        !tmp.path().join("build").exists(),
        "status created the build dir"
    );
}

#[test]
fn clean_needs_a_target_and_never_touches_the_download_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let out = xtask(&["clean"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("say what to clean"));

    let cache = tmp.path().join("downloads/linux-2.6.20.tar.bz2");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    std::fs::write(&cache, "cached").unwrap();
    std::fs::create_dir_all(tmp.path().join("build/logs")).unwrap();
    let out = xtask_in(tmp.path(), &["clean", "--all"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(!tmp.path().join("build").exists());
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), "cached");
}

/// A copy of the smoke profile whose sources come from `server`.
fn profile_with_local_sources(
    dir: &Path,
    server: &common::http::TestServer,
    linux_sha: &str,
) -> std::path::PathBuf {
    let smoke = std::fs::read_to_string(xtask::project_root().join("profiles/smoke.toml")).unwrap();
    let head = &smoke[..smoke.find("[[sources]]").unwrap()];
    let tail = &smoke[smoke.find("[network]").unwrap()..];
    let sources = format!(
        "[[sources]]\nname = \"linux\"\nfile = \"linux-2.6.20.tar.bz2\"\nsha256 = \"{linux_sha}\"\nurls = [\"{}\"]\n\n\
         [[sources]]\nname = \"kerrighed\"\nfile = \"kerrighed-2.4.1.tar.gz\"\nurls = [\"{}\", \"{}\"]\n\n",
        server.url("/linux-2.6.20.tar.bz2"),
        common::http::refused_url().unwrap(),
        server.url("/kerrighed-2.4.1.tar.gz"),
    );
    let path = dir.join("profiles/local.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("{head}{sources}{tail}")).unwrap();
    path
}

/// The 2.4.1 profile's kerrighed tarball has no published sha256: its
/// pin lives in sources.lock. Without one, `build` stops before any stage
/// runs (here before it even asks for root), in seconds, naming the file
/// and the command that pins it.
#[test]
fn a_build_with_an_unpinned_source_stops_before_any_stage_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("profiles/default-copy.toml");
    std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
    std::fs::copy(
        xtask::project_root().join("profiles/kerrighed-2.4.1-lenny.toml"),
        &profile,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = xtask_in(
        tmp.path(),
        &["--profile", &profile.display().to_string(), "build"],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("kerrighed-2.4.1.tar.gz has no sha256 pin")
            && stderr.contains("Run `cargo xtask fetch` first")
            && stderr.contains("nothing was built"),
        "{stderr}"
    );
    // Never "pin it" before "compare it".
    let compare = stderr.find("Compare that sha256").expect("asks to compare");
    assert!(
        stderr.find("--lock-new").is_some_and(|at| at > compare),
        "{stderr}"
    );
    assert!(
        !stderr.contains("root"),
        "it stopped before the root check: {stderr}"
    );
    assert!(
        !tmp.path().join("build/stamps").exists() && !tmp.path().join("build/roots").exists(),
        "a stage ran"
    );
}

#[test]
fn fetch_stops_on_an_unpinned_source_then_lock_new_pins_it() {
    use common::http::{Route, TestServer};
    let server = TestServer::start().unwrap();
    let linux = b"pretend linux tarball".repeat(1000);
    let krg = b"pretend kerrighed tarball".repeat(500);
    server.route("/linux-2.6.20.tar.bz2", Route::file(&linux));
    server.route("/kerrighed-2.4.1.tar.gz", Route::file(&krg));
    let tmp = tempfile::tempdir().unwrap();
    let profile =
        profile_with_local_sources(tmp.path(), &server, &xtask::bytes::sha256_hex(&linux));
    let profile = profile.display().to_string();
    let run = |extra: &[&str]| {
        xtask_in(
            tmp.path(),
            &[&["--profile", &profile, "fetch"], extra].concat(),
        )
    };

    let out = run(&[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&xtask::bytes::sha256_hex(&krg)), "{stderr}");
    assert!(
        stderr.contains("size") && stderr.contains(&server.url("/kerrighed-2.4.1.tar.gz")),
        "{stderr}"
    );
    assert!(stderr.contains("cargo xtask fetch --lock-new"), "{stderr}");
    assert!(
        stderr.contains("refused"),
        "the dead mirror is reported:\n{stderr}"
    );
    let lock = tmp.path().join("profiles/sources.lock");
    assert!(!lock.exists());
    assert!(
        tmp.path().join("downloads/linux-2.6.20.tar.bz2").exists(),
        "the pinned source is cached"
    );
    assert!(!tmp.path().join("downloads/kerrighed-2.4.1.tar.gz").exists());

    let out = run(&["--lock-new"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pinned kerrighed-2.4.1.tar.gz"), "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("verified "))
            .count(),
        2,
        "{stdout}"
    );
    assert!(std::fs::read_to_string(&lock)
        .unwrap()
        .contains(&xtask::bytes::sha256_hex(&krg)));

    let requests = server.seen().len();
    let out = run(&["--offline"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        server.seen().len(),
        requests,
        "a verified cache opens no connection"
    );
}

#[test]
fn a_pre_download_dir_from_the_environment_feeds_an_offline_fetch() {
    use common::http::{Route, TestServer};
    let server = TestServer::start().unwrap();
    let linux = b"pretend linux tarball".repeat(700);
    let krg = b"pretend kerrighed tarball".repeat(300);
    server.route("/linux-2.6.20.tar.bz2", Route::file(&linux));
    let tmp = tempfile::tempdir().unwrap();
    let profile =
        profile_with_local_sources(tmp.path(), &server, &xtask::bytes::sha256_hex(&linux));
    // kerrighed-2.4.1 is pinned in the lock; both files wait in the directory.
    std::fs::write(
        tmp.path().join("profiles/sources.lock"),
        format!(
            "[sha256]\n\"kerrighed-2.4.1.tar.gz\" = \"{}\"\n",
            xtask::bytes::sha256_hex(&krg)
        ),
    )
    .unwrap();
    let tarballs = tmp.path().join("tarballs");
    std::fs::create_dir_all(&tarballs).unwrap();
    std::fs::write(tarballs.join("linux-2.6.20.tar.bz2"), &linux).unwrap();
    std::fs::write(tarballs.join("kerrighed-2.4.1.tar.gz"), &krg).unwrap();
    let profile = profile.display().to_string();
    let fetch = |env_dir: &Path| {
        command_in(tmp.path(), &["--profile", &profile, "--offline", "fetch"])
            .env("KRGISO_SOURCES_DIR", env_dir)
            .output()
            .expect("running xtask")
    };

    let out = fetch(&tmp.path().join("no-such-dir"));
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("pre-download directory") && stderr.contains("no-such-dir"),
        "{stderr}"
    );

    let out = fetch(&tarballs);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("verified "))
            .count(),
        2,
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("downloads/kerrighed-2.4.1.tar.gz")).unwrap(),
        krg
    );
    assert!(server.seen().is_empty(), "--offline opened a connection");
}
