//! The stage engine over the real pipeline's declarations, with stand-in work.

mod common;

use std::fs;

use common::{snapshot, Record, Sandbox};
use xtask::engine::{Action, RunOptions, StageFailed, State};
use xtask::stages::{ALL_BUT_KERNEL, BUILD, ISO};

const OPTS: RunOptions = RunOptions {
    force: false,
    verbose: false,
    install_host_tools: false,
};

fn states(engine: &xtask::engine::Engine) -> Vec<(String, State)> {
    engine
        .status()
        .unwrap()
        .into_iter()
        .map(|(n, s, _)| (n.to_owned(), s))
        .collect()
}

fn state(engine: &xtask::engine::Engine, stage: &str) -> State {
    states(engine)
        .into_iter()
        .find(|(n, _)| n == stage)
        .unwrap()
        .1
}

fn stale_because(engine: &xtask::engine::Engine, stage: &str, needle: &str) -> bool {
    match state(engine, stage) {
        State::Stale(why) => why.iter().any(|w| w.contains(needle)),
        _ => false,
    }
}

#[test]
fn build_runs_every_stage_once_then_skips_all_of_them() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    assert!(states(&engine).iter().all(|(_, s)| *s == State::Missing));

    engine.run(BUILD, OPTS).unwrap();
    assert_eq!(record.runs(), BUILD);
    assert!(
        states(&engine).iter().all(|(_, s)| *s == State::Done),
        "{:?}",
        states(&engine)
    );
    let image = sb.layout().out.join("krgiso-smoke.iso");
    assert_eq!(fs::read_to_string(&image).unwrap(), "iso run #4\n");

    let before = snapshot(&sb.layout().build);
    record.clear();
    let timings = engine.run(BUILD, OPTS).unwrap();
    assert!(record.runs().is_empty(), "ran {:?}", record.runs());
    assert!(timings.is_empty());
    // Nothing but the lock file may be touched by a no-op build.
    let after = snapshot(&sb.layout().build);
    assert_eq!(before, after);
}

#[test]
fn an_overlay_change_makes_node1_and_iso_stale_but_not_kernel_or_packages() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    engine.run(BUILD, OPTS).unwrap();

    fs::write(sb.project().join("overlay/node1/etc/motd"), "changed\n").unwrap();
    assert_eq!(state(&engine, "packages"), State::Done);
    assert_eq!(state(&engine, "kernel"), State::Done);
    assert!(
        stale_because(&engine, "node1", "file overlay/node1/etc/motd changed"),
        "{:?}",
        states(&engine)
    );
    assert!(
        stale_because(&engine, "iso", "node1 is stale"),
        "{:?}",
        states(&engine)
    );

    record.clear();
    engine.run(BUILD, OPTS).unwrap();
    assert_eq!(record.runs(), ["node1", "iso"]);
    // Planned once each; read again only by the stages that run (an
    // earlier stage may have changed what they use), never by those skipped.
    let read = |stage: &str| {
        record
            .inputs_read()
            .into_iter()
            .find(|(s, _)| s == stage)
            .map_or(0, |(_, n)| n)
    };
    assert_eq!(
        [read("packages"), read("kernel"), read("node1"), read("iso")],
        [1, 1, 2, 2],
        "{:?}",
        record.inputs_read()
    );

    // A new file and a removed file are changes too, and are named.
    fs::write(sb.project().join("overlay/nodes/new-file"), "x").unwrap();
    assert!(stale_because(
        &engine,
        "node1",
        "file overlay/nodes/new-file added"
    ));
    engine.run(BUILD, OPTS).unwrap();
    fs::remove_file(sb.project().join("overlay/nodes/new-file")).unwrap();
    assert!(stale_because(
        &engine,
        "node1",
        "file overlay/nodes/new-file removed"
    ));
}

#[test]
fn a_profile_key_or_config_fragment_change_reruns_exactly_what_reads_it() {
    let sb = Sandbox::new();
    let record = Record::default();
    sb.engine("kerrighed-2.4.1-lenny", &record)
        .run(BUILD, OPTS)
        .unwrap();

    // [iso] is read by the iso stage only.
    sb.edit_profile(
        "kerrighed-2.4.1-lenny",
        "volume = \"KRGISO_241\"",
        "volume = \"KRGISO2\"",
    );
    let engine = sb.engine("kerrighed-2.4.1-lenny", &record);
    assert!(stale_because(&engine, "iso", "profile [iso] changed"));
    assert_eq!(state(&engine, "node1"), State::Done);
    record.clear();
    engine.run(BUILD, OPTS).unwrap();
    assert_eq!(record.runs(), ["iso"]);

    // [status] is rendered into node1's files: node1, then the image.
    sb.edit_profile(
        "kerrighed-2.4.1-lenny",
        "listen = \"cluster\"",
        "listen = \"all\"",
    );
    let engine = sb.engine("kerrighed-2.4.1-lenny", &record);
    assert!(stale_because(&engine, "node1", "profile [status] changed"));
    assert_eq!(state(&engine, "kernel"), State::Done);
    record.clear();
    engine.run(BUILD, OPTS).unwrap();
    assert_eq!(record.runs(), ["node1", "iso"]);

    // The kernel fragment: kernel, then what uses the kernel.
    let fragment = sb.project().join("kernel-configs/krg-2.6.20.config");
    let text = fs::read_to_string(&fragment).unwrap();
    fs::write(&fragment, text + "CONFIG_SKY2=y\n").unwrap();
    assert!(stale_because(
        &engine,
        "kernel",
        "file kernel-configs/krg-2.6.20.config changed"
    ));
    assert_eq!(state(&engine, "packages"), State::Done);
    record.clear();
    engine.run(BUILD, OPTS).unwrap();
    assert_eq!(record.runs(), ["kernel", "node1", "iso"]);

    // The nodes' package list: everything, since every stage uses the nodes root.
    sb.edit_profile(
        "kerrighed-2.4.1-lenny",
        "\"lsb-release\",",
        "\"lsb-release\", \"less\",",
    );
    let engine = sb.engine("kerrighed-2.4.1-lenny", &record);
    assert!(stale_because(
        &engine,
        "packages",
        "profile [nodes] changed"
    ));
    let plan = engine.plan(BUILD, false).unwrap();
    assert!(
        plan.steps
            .iter()
            .all(|s| matches!(s.action, Action::Run(_))),
        "{}",
        plan.render()
    );
    record.clear();
    engine.run(BUILD, OPTS).unwrap();
    assert_eq!(record.runs(), BUILD);
}

#[test]
fn iso_refuses_when_its_inputs_were_never_built() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    let err = engine.run(ISO, OPTS).unwrap_err().to_string();
    assert!(
        err.contains("never built") && err.contains("cargo xtask build"),
        "{err}"
    );
    assert!(err.contains("packages") && err.contains("kernel"), "{err}");
    assert!(record.runs().is_empty());
    assert!(!sb.layout().build.join("stamps").exists());

    // allbutkernel without a kernel would make an image that cannot boot nodes.
    let err = engine.run(ALL_BUT_KERNEL, OPTS).unwrap_err().to_string();
    assert!(err.contains("kernel"), "{err}");
    assert!(record.runs().is_empty(), "{:?}", record.runs());
}

#[test]
fn iso_and_allbutkernel_never_rerun_a_stale_kernel() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("kerrighed-2.4.1-lenny", &record);
    engine.run(BUILD, OPTS).unwrap();
    let kernel_stamp = fs::read(sb.layout().stamp("kernel")).unwrap();

    let fragment = sb.project().join("kernel-configs/krg-2.6.20.config");
    fs::write(&fragment, "CONFIG_E1000=y\n").unwrap();
    fs::write(sb.project().join("overlay/node1/etc/motd"), "changed\n").unwrap();
    assert!(matches!(state(&engine, "kernel"), State::Stale(_)));

    let plan = engine.plan(ISO, false).unwrap();
    assert!(
        plan.warnings.iter().any(|w| w.contains("kernel is stale")),
        "{:?}",
        plan.warnings
    );
    record.clear();
    engine.run(ISO, OPTS).unwrap();
    assert_eq!(record.runs(), ["node1", "iso"]);

    // node1's packages, in the file the profiles include.
    sb.edit_profile("include/node1", "\"nftables\",", "\"nftables\", \"less\",");
    let engine = sb.engine("kerrighed-2.4.1-lenny", &record);
    record.clear();
    engine.run(ALL_BUT_KERNEL, OPTS).unwrap();
    assert_eq!(record.runs(), ["packages", "node1", "iso"]);
    assert_eq!(fs::read(sb.layout().stamp("kernel")).unwrap(), kernel_stamp);
}

#[test]
fn a_stage_that_fails_halfway_leaves_no_stamp_and_no_output_that_looks_finished() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    record.fail(Some("kernel"));
    let err = engine.run(BUILD, OPTS).unwrap_err();
    let failed = err.downcast_ref::<StageFailed>().expect("a StageFailed");
    assert_eq!(failed.stage, "kernel");
    let log = fs::read_to_string(&failed.log).unwrap();
    assert!(log.contains("half of kernel done"), "{log}");
    assert_eq!(record.runs(), ["packages", "kernel"]);

    let kernel_dir = sb.layout().build.join("kernel");
    assert!(!sb.layout().stamp("kernel").exists());
    assert!(
        !kernel_dir.exists(),
        "a failed kernel left {}",
        kernel_dir.display()
    );
    assert!(!sb.layout().build.join(".kernel.partial").exists());
    assert_eq!(state(&engine, "packages"), State::Done);
    assert_eq!(state(&engine, "kernel"), State::Missing);

    // The next run resumes where it stopped: packages is not redone.
    record.fail(None);
    record.clear();
    engine.run(BUILD, OPTS).unwrap();
    assert_eq!(record.runs(), ["kernel", "node1", "iso"]);
    let made_by = fs::read_to_string(kernel_dir.join("made-by")).unwrap();
    assert_eq!(made_by, "kernel run #1\n");
}

#[test]
fn a_stage_that_fills_the_disk_says_where_and_how_much_it_needs_in_one_line() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    record.fail_saying(
        "node1",
        "cp: error writing 'tftp/initrd.img': No space left on device",
    );
    let err = engine.run(BUILD, OPTS).unwrap_err();
    let failed = err.downcast_ref::<StageFailed>().expect("a StageFailed");
    assert_eq!(failed.stage, "node1");
    let build = sb.layout().build.display().to_string();
    assert!(
        failed
            .cause
            .starts_with(&format!("the disk is full under {build} (")),
        "{}",
        failed.cause
    );
    assert!(
        failed
            .cause
            .contains("stage node1 needs about 64.0 MiB there"),
        "{}",
        failed.cause
    );
    assert!(!failed.cause.contains('\n') && failed.causes.is_empty());
    assert!(!sb.layout().stamp("node1").exists());
    assert!(!sb.layout().layers().exists());

    // Another failure is not taken for a full disk.
    let sb = Sandbox::new();
    let engine = sb.engine("smoke", &record);
    record.fail(Some("kernel"));
    let err = engine.run(BUILD, OPTS).unwrap_err();
    let failed = err.downcast_ref::<StageFailed>().expect("a StageFailed");
    assert!(!failed.cause.contains("disk is full"), "{}", failed.cause);
}

#[test]
fn a_failed_rebuild_keeps_the_previous_output_and_its_stamp() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    engine.run(BUILD, OPTS).unwrap();
    let image = sb.layout().out.join("krgiso-smoke.iso");
    let before = fs::read_to_string(&image).unwrap();

    record.fail(Some("iso"));
    let forced = RunOptions {
        force: true,
        ..OPTS
    };
    assert!(engine.run(&["iso"], forced).is_err());
    assert_eq!(fs::read_to_string(&image).unwrap(), before);
    assert_eq!(state(&engine, "iso"), State::Done);
    let leftovers: Vec<_> = fs::read_dir(&sb.layout().out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[test]
fn leftovers_of_a_killed_run_are_removed_before_the_stage_runs_again() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    // As if a run was killed (SIGKILL) while building the roots.
    let partial = sb.layout().build.join("roots/.node1.partial");
    fs::create_dir_all(partial.join("etc")).unwrap();
    fs::write(partial.join("etc/half-written"), "x").unwrap();
    assert_eq!(state(&engine, "packages"), State::Missing);
    engine.run(&["packages"], OPTS).unwrap();
    assert!(!partial.exists());
    let root = sb.layout().build.join("roots/node1");
    assert!(root.join("made-by").exists());
    assert!(!root.join("etc/half-written").exists());
}

#[test]
fn clean_removes_outputs_and_stamp_and_makes_dependants_stale() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    engine.run(BUILD, OPTS).unwrap();

    engine.clean("packages").unwrap();
    assert!(!sb.layout().stamp("packages").exists());
    assert!(!sb.layout().build.join("roots/node1").exists());
    assert!(!sb.layout().build.join("roots/nodes").exists());
    assert_eq!(state(&engine, "packages"), State::Missing);
    for dependant in ["kernel", "node1", "iso"] {
        assert!(
            stale_because(&engine, dependant, "packages/"),
            "{dependant}: {:?}",
            states(&engine)
        );
    }
    // iso cannot use roots that are gone.
    assert!(engine.run(ISO, OPTS).is_err());

    let cache = sb.layout().downloads.join("linux-2.6.20.tar.bz2");
    fs::create_dir_all(cache.parent().unwrap()).unwrap();
    fs::write(&cache, "cached").unwrap();
    engine.clean_all().unwrap();
    assert!(!sb.layout().build.exists());
    assert!(!sb.layout().out.join("krgiso-smoke.iso").exists());
    assert_eq!(fs::read_to_string(&cache).unwrap(), "cached");
}

#[test]
fn force_reruns_up_to_date_stages_and_the_plan_says_so() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    engine.run(BUILD, OPTS).unwrap();
    let plan = engine.plan(&["node1"], true).unwrap();
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(
        plan.steps[0].action,
        Action::Run(vec!["--force".to_owned()])
    );
    record.clear();
    engine
        .run(
            &["node1"],
            RunOptions {
                force: true,
                ..OPTS
            },
        )
        .unwrap();
    assert_eq!(record.runs(), ["node1"]);
    // iso used node1's output, which is new now.
    assert!(
        stale_because(&engine, "iso", "output node1/config changed"),
        "{:?}",
        states(&engine)
    );
}

#[test]
fn planning_changes_nothing_on_disk() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    let plan = engine.plan(BUILD, false).unwrap();
    assert_eq!(plan.will_run().collect::<Vec<_>>(), BUILD);
    assert!(!sb.layout().build.exists());
    engine.run(BUILD, OPTS).unwrap();
    fs::write(sb.project().join("overlay/node1/etc/motd"), "changed\n").unwrap();
    let before = snapshot(sb.dir.path());
    let plan = engine.plan(BUILD, false).unwrap();
    assert_eq!(plan.will_run().collect::<Vec<_>>(), ["node1", "iso"]);
    engine.status().unwrap();
    assert_eq!(snapshot(sb.dir.path()), before);
    assert!(record.runs().len() == 4);
}

#[test]
fn a_second_run_on_the_same_build_dir_is_refused_while_the_first_holds_it() {
    use std::os::fd::AsRawFd;
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("smoke", &record);
    fs::create_dir_all(&sb.layout().build).unwrap();
    // Another run holds the lock.
    let held = fs::File::create(sb.layout().build.join(".lock")).unwrap();
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let err = engine.run(BUILD, OPTS).unwrap_err().to_string();
    assert!(
        err.contains("another krgiso run is using the build dir"),
        "{err}"
    );
    assert!(record.runs().is_empty());
    assert!(engine.clean("iso").is_err());
    drop(held);
    engine.run(BUILD, OPTS).unwrap();
    assert_eq!(record.runs(), BUILD);
}

#[test]
fn pinning_a_source_in_sources_lock_makes_the_kernel_stale() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine("kerrighed-2.4.1-lenny", &record);
    engine.run(BUILD, OPTS).unwrap();
    let lock = sb.project().join("profiles/sources.lock");
    let built_with = fs::read_to_string(&lock).unwrap();
    fs::write(
        &lock,
        format!(
            "[sha256]\n\"kerrighed-2.4.1.tar.gz\" = \"{}\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    assert!(
        stale_because(&engine, "kernel", "source kerrighed changed"),
        "{:?}",
        states(&engine)
    );
    assert_eq!(state(&engine, "packages"), State::Done);
    // A mirror list change is not a change of the bytes: nothing to redo.
    fs::write(&lock, built_with).unwrap();
    sb.edit_profile(
        "kerrighed-2.4.1-lenny",
        "    # add your own mirrors here\n",
        "    \"https://mirror.example/kerrighed-2.4.1.tar.gz\",\n",
    );
    let engine = sb.engine("kerrighed-2.4.1-lenny", &record);
    assert_eq!(
        state(&engine, "kernel"),
        State::Done,
        "{:?}",
        states(&engine)
    );
}

#[test]
fn offline_stops_a_build_whose_roots_need_a_mirror_before_anything_runs() {
    let sb = Sandbox::new();
    let record = Record::default();
    let engine = sb.engine_with("smoke", &record, true);
    let err = engine.run(BUILD, OPTS).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "--offline, but the node1 root needs its mirror http://deb.debian.org/debian"
        ),
        "{err}"
    );
    assert!(record.runs().is_empty());
    assert!(!sb.layout().build.exists());
}
