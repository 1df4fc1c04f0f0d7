//! The command line: parses arguments, loads the profile, hands the work to
//! the engine or a command module, and turns errors into one clear message
//! and an exit code. Knows nothing of debootstrap.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::bench::Bench;
use crate::engine::{Engine, RunOptions, State};
use crate::fetch::{self, Cache, FetchOptions, SourcesLock};
use crate::host::{self, NeedsRoot};
use crate::interrupt::{self, Interrupted};
use crate::layout::Layout;
use crate::profile::{self, KernelKind, Profile};
use crate::qemu::{BootTest, QemuAccel, QemuFirmware};
use crate::stages::{self, BuildContext};
use crate::testsuite;
use crate::usb::{self, Sysfs, UsbOptions};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "krgiso: build a bootable live USB/ISO image for a Kerrighed cluster",
    long_about = "krgiso: build a bootable live USB/ISO image for a Kerrighed cluster.\n\n\
The first machine boots the image and becomes node1: by itself it serves DHCP, \
TFTP (PXE) and NFS on its cluster interface. Every other machine PXE-boots the \
Kerrighed kernel with an NFS root and joins the cluster.",
    after_help = "Typical use, in a Debian VM, as yourself (krgiso runs itself through sudo when it needs root):\n  \
cargo xtask build                  # everything\n  \
cargo xtask qemu --nodes 2         # rehearse: node1 and two PXE nodes in QEMU\n  \
cargo xtask usb /dev/sdX           # write it to a USB stick, checked and verified\n  \
cargo xtask iso                    # rebuild the image only, never the kernel",
    version
)]
pub(crate) struct Cli {
    /// Profile: a name under profiles/ or a path to a TOML file
    #[arg(
        long,
        global = true,
        default_value = profile::DEFAULT,
        value_name = "NAME|PATH"
    )]
    pub(crate) profile: String,
    /// Build directory [default: ./build; the image then goes to ./out, else to DIR/out]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) build_dir: Option<PathBuf>,
    /// Never open a network connection: sources must be in the download cache
    /// (or in --sources-dir)
    #[arg(long, global = true)]
    pub(crate) offline: bool,
    /// A directory of source tarballs to use before the mirrors (checked
    /// against the same sha256 pins), for machines that cannot reach them
    #[arg(long, global = true, value_name = "DIR", env = "KRGISO_SOURCES_DIR")]
    pub(crate) sources_dir: Option<PathBuf>,
    /// Show the output of every command, not only a spinner
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
    /// Rerun stages even if they are up to date
    #[arg(long, global = true)]
    pub(crate) force: bool,
    /// Print the plan (which stages would run, and why); run nothing
    #[arg(long, global = true)]
    pub(crate) dry_run: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Build everything: packages, kernel, node1, iso (skipping what is up to date)
    Build,
    /// Debootstrap the node1 and nodes roots (and the build root) and install their packages
    Packages,
    /// Build the node kernel (in the nodes root or the build root) and stage it for TFTP
    Kernel,
    /// Render node1's PXE, DHCP and NFS configuration and apply the overlays
    Node1,
    /// Everything except the kernel (the kernel is used as built)
    Allbutkernel,
    /// Rebuild the image from the existing roots and kernel (node1 too, if stale)
    Iso,
    /// Download and verify the kernel sources only
    Fetch {
        /// Pin sources that have no sha256 yet in sources.lock (beside the profile)
        #[arg(long)]
        lock_new: bool,
    },
    /// Show each stage: done, stale (and why) or missing
    Status,
    /// Remove a stage's outputs and stamp (downloads are kept)
    Clean {
        /// The stage to clean
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(stages::BUILD))]
        stage: Option<String>,
        /// Remove the whole build dir and the image (never the download cache)
        #[arg(long, conflicts_with = "stage")]
        all: bool,
    },
    /// Boot the image in QEMU as node1, with N machines PXE-booting from it, and check the cluster works
    Qemu(QemuArgs),
    /// Write the image to a USB stick, safely (checks it, shows it, asks, verifies)
    Usb(UsbArgs),
    /// Time the builds a user repeats: cold, no-op, iso after an overlay change, allbutkernel after a package change
    Bench {
        /// Only the no-op build and iso after an overlay change, on the existing build dir
        #[arg(long)]
        quick: bool,
    },
    /// Run the whole test suite (installs the host tools it needs)
    Test {
        /// Run only this part (`cargo xtask test --dry-run` lists them)
        #[arg(long, value_name = "PART")]
        only: Option<String>,
        /// Start at this part, skipping those before it
        #[arg(long, value_name = "PART", conflicts_with = "only")]
        from: Option<String>,
    },
}

/// `qemu`'s options.
#[derive(Debug, clap::Args)]
pub(crate) struct QemuArgs {
    /// How many PXE nodes to boot (0: node1 only)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub(crate) nodes: u32,
    /// Leave the VMs running at the end (until Ctrl-C), consoles free to attach
    #[arg(long)]
    pub(crate) keep: bool,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 900, value_name = "S")]
    pub(crate) timeout: u64,
    /// Accelerator: tcg, or kvm (falls back to tcg with a warning if KVM fails)
    #[arg(long, value_enum, default_value_t = QemuAccel::Tcg)]
    pub(crate) accel: QemuAccel,
    /// node1's firmware: bios (SeaBIOS) or uefi (OVMF)
    #[arg(long, value_enum, default_value_t = QemuFirmware::Bios)]
    pub(crate) firmware: QemuFirmware,
    /// Boot the last N PXE nodes in UEFI mode (OVMF): they load iPXE's EFI build; on a Kerrighed profile they must be turned away (no EFI stub in 2.6.20)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) uefi_nodes: u32,
    /// Boot node1 from this USB stick image (made with `usb --allow-file FILE`) instead of the ISO as a CD
    #[arg(long, value_name = "FILE")]
    pub(crate) stick: Option<PathBuf>,
    /// After the checks, each node fsyncs a file, node1's power is cut (its QEMU killed) and it is powered on again, then each node: files whole, same addresses, nothing lost (needs --stick with KRGISO-DATA)
    #[arg(long, requires = "stick")]
    pub(crate) reboot: bool,
    /// Make the cluster link a LAN with a DHCP server of its own (in a network namespace): node1 must only proxy, and a host of that LAN that did not PXE-boot must be refused the nodes' root
    #[arg(long, conflicts_with = "reboot")]
    pub(crate) foreign_dhcp: bool,
    /// Kerrighed: once the cluster of --nodes runs, power on one more node; it must be left out, and say so
    #[arg(long)]
    pub(crate) late_node: bool,
    /// Kerrighed: at the end, kill a member's QEMU; the others must see it lost, reset, and form the cluster again without it (at least nbmin + 1 nodes)
    #[arg(long, conflicts_with = "reboot")]
    pub(crate) lose_node: bool,
    /// Kerrighed, with --foreign-dhcp: the last two PXE nodes get addresses whose node id is node2's and node1's (another /24); node1 must name each clash, on its status page and on the node's console, and the others form the cluster (--nodes 4 or more)
    #[arg(long, requires = "foreign_dhcp")]
    pub(crate) id_clash: bool,
    /// Kerrighed: once the cluster runs, time a batch of CPU-bound jobs (4 per node) kept on one node, then spread by Kerrighed's scheduler; the gain goes into report.json, for `bench`
    #[arg(long)]
    pub(crate) cluster_gain: bool,
}

/// `usb`'s options.
#[derive(Debug, clap::Args)]
pub(crate) struct UsbArgs {
    /// The whole device, e.g. /dev/sdb or /dev/disk/by-id/usb-...
    pub(crate) device: PathBuf,
    /// Write without asking for confirmation
    #[arg(long)]
    pub(crate) yes: bool,
    /// DEVICE may be a regular file (created if missing): for tests
    #[arg(long)]
    pub(crate) allow_file: bool,
    /// Then add an ext4 partition labelled KRGISO-DATA after the image (node1 keeps the nodes' root there)
    #[arg(long)]
    pub(crate) data: bool,
}

/// Entry point: runs the command, prints any error, returns the exit code.
pub fn main() -> ExitCode {
    interrupt::install();
    let cli = Cli::parse();
    let result = match run(cli) {
        Err(err) => match err.downcast_ref::<NeedsRoot>() {
            // Nothing was written: the same command again, as root.
            Some(needs) => host::run_again_as_root(
                needs,
                &args_as_root(
                    std::env::args_os().skip(1).collect(),
                    std::env::var_os(fetch::SOURCES_DIR_ENV),
                    &needs.resume,
                ),
            ),
            None => Err(err),
        },
        ok => ok,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("interrupted: no stamp written");
            ExitCode::from(interrupt::EXIT_CODE)
        }
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// The command line as typed, for the run as root: the pre-download
/// directory given by the environment (which sudo does not keep) becomes
/// `--sources-dir`, and what the first run asks to resume is added.
fn args_as_root(
    typed: Vec<OsString>,
    sources_dir: Option<OsString>,
    resume: &[String],
) -> Vec<OsString> {
    let mut args = Vec::new();
    let given = typed
        .iter()
        .any(|a| a.to_string_lossy().starts_with("--sources-dir"));
    if let Some(dir) = sources_dir.filter(|_| !given) {
        args.push(OsString::from("--sources-dir"));
        args.push(dir);
    }
    // An option the resume sets replaces the one typed (`--from A` as
    // typed, `--from B` to go on): clap takes each only once.
    let replaced = resume.first().filter(|o| o.starts_with("--"));
    let mut typed = typed.into_iter();
    while let Some(arg) = typed.next() {
        let text = arg.to_string_lossy();
        match replaced {
            Some(option) if text == option.as_str() => {
                typed.next();
            }
            Some(option) if text.starts_with(&format!("{option}=")) => {}
            _ => args.push(arg),
        }
    }
    args.extend(resume.iter().map(OsString::from));
    args
}

fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    // The chain, when it adds something the top line did not say.
    let top = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !top.contains(&cause) {
            eprintln!("  caused by: {cause}");
        }
    }
}

/// What every command but `test` works from: the profile, where it came
/// from, where things live, and the pre-download directory.
struct Session {
    profile: Profile,
    profile_path: PathBuf,
    layout: Layout,
    sources_dir: Option<PathBuf>,
}

impl Session {
    fn load(cli: &Cli, project: &Path, sources_dir: Option<PathBuf>) -> Result<Session> {
        let profile_path = profile::resolve(&cli.profile, project)?;
        let profile = Profile::load(&profile_path)?;
        for warning in profile.warnings() {
            eprintln!("warning: {warning}");
        }
        let build_dir = cli
            .build_dir
            .as_deref()
            .map(std::path::absolute)
            .transpose()?;
        Ok(Session {
            profile,
            profile_path,
            layout: Layout::new(project, build_dir.as_deref()),
            sources_dir,
        })
    }

    fn engine(self, offline: bool) -> Engine {
        stages::engine(BuildContext {
            profile: self.profile,
            profile_path: self.profile_path,
            layout: self.layout,
            offline,
            sources_dir: self.sources_dir,
        })
    }
}

/// The pre-download directory (`--sources-dir` or the environment), made
/// absolute and checked; exported, so the bench and the test suite, which
/// run this binary again, see it too.
fn pre_download_dir(cli: &Cli) -> Result<Option<PathBuf>> {
    let Some(dir) = cli
        .sources_dir
        .as_deref()
        .map(std::path::absolute)
        .transpose()?
    else {
        return Ok(None);
    };
    if !dir.is_dir() {
        bail!(
            "the pre-download directory {} does not exist (--sources-dir / {})",
            dir.display(),
            fetch::SOURCES_DIR_ENV
        );
    }
    std::env::set_var(fetch::SOURCES_DIR_ENV, &dir);
    Ok(Some(dir))
}

/// Hands each command to its own function.
fn run(cli: Cli) -> Result<()> {
    let project = crate::project_root();
    let sources_dir = pre_download_dir(&cli)?;
    let session = || Session::load(&cli, &project, sources_dir.clone());
    match &cli.command {
        Command::Test { only, from } => {
            let parts = match (only, from) {
                (Some(part), _) => testsuite::Parts::Only(part),
                (None, Some(part)) => testsuite::Parts::From(part),
                (None, None) => testsuite::Parts::All,
            };
            testsuite::run(&project, parts, cli.dry_run)
        }
        Command::Fetch { lock_new } => fetch_sources(&cli, &session()?, *lock_new),
        Command::Qemu(args) => qemu(&cli, &session()?, args),
        Command::Usb(args) => write_stick(&cli, &session()?, args),
        Command::Bench { quick } => bench(&cli, &session()?, project.clone(), *quick),
        Command::Status => status(&session()?.engine(cli.offline), &cli.profile),
        Command::Clean { stage, all } => clean(
            &session()?.engine(cli.offline),
            stage.as_deref(),
            *all,
            cli.dry_run,
        ),
        Command::Build => build(&cli, session()?, stages::BUILD),
        Command::Packages => build(&cli, session()?, &["packages"]),
        Command::Kernel => build(&cli, session()?, &["kernel"]),
        Command::Node1 => build(&cli, session()?, &["node1"]),
        Command::Allbutkernel => build(&cli, session()?, stages::ALL_BUT_KERNEL),
        Command::Iso => build(&cli, session()?, stages::ISO),
    }
}

/// `qemu`: the boot test of this build's image.
fn qemu(cli: &Cli, session: &Session, args: &QemuArgs) -> Result<()> {
    let QemuArgs {
        nodes,
        keep,
        timeout,
        accel,
        firmware,
        uefi_nodes,
        stick,
        reboot,
        foreign_dhcp,
        late_node,
        lose_node,
        id_clash,
        cluster_gain,
    } = args;
    let mut test = BootTest::for_build(&session.profile, &session.layout, *nodes, *firmware)?
        .with_uefi_nodes(*uefi_nodes, &session.layout.log("qemu"))?;
    if *foreign_dhcp {
        test = test.on_a_foreign_lan(&session.layout.log("qemu"))?;
    }
    if *late_node {
        test = test.with_a_late_node()?;
    }
    if *lose_node {
        test = test.with_a_lost_node()?;
    }
    if *id_clash {
        test = test.with_id_clashes()?;
    }
    if *cluster_gain {
        test = test.with_cluster_gain()?;
    }
    let test = BootTest {
        stick: stick.as_deref().map(std::path::absolute).transpose()?,
        reboot: *reboot,
        keep: *keep,
        timeout: Duration::from_secs(*timeout),
        accel: *accel,
        ..test
    };
    if cli.dry_run {
        println!(
            "would boot {} as node1 with {nodes} PXE node(s)",
            test.iso.display()
        );
        return Ok(());
    }
    host::require_root(
        "`qemu`",
        "it works in the build dir, which the build made as root",
    )?;
    test.run()?;
    Ok(())
}

/// `usb`: the image onto a whole disk, checked, shown, asked, verified.
fn write_stick(cli: &Cli, session: &Session, args: &UsbArgs) -> Result<()> {
    let UsbArgs {
        device,
        yes,
        allow_file,
        data,
    } = args;
    let layout = &session.layout;
    let (image, checksum) = layout.image(&session.profile.iso);
    if !cli.dry_run {
        host::require_root("`usb`", "it writes a whole disk device")?;
    }
    usb::write(&UsbOptions {
        device: device.clone(),
        image: image.clone(),
        checksum,
        yes: *yes,
        allow_file: *allow_file,
        data: *data,
        dry_run: cli.dry_run,
        protected: vec![
            ("/ (the running system)".to_owned(), PathBuf::from("/")),
            (
                format!("the build directory {}", layout.build.display()),
                layout.build.clone(),
            ),
            (format!("the image {}", image.display()), image),
        ],
        sysfs: Sysfs::default(),
        logs: layout.logs(),
    })
    .map(|_| ())
}

/// `bench`: the builds a user repeats, timed.
fn bench(cli: &Cli, session: &Session, project: PathBuf, quick: bool) -> Result<()> {
    let layout = &session.layout;
    let bench = Bench {
        exe: std::env::current_exe()?,
        project,
        profile: session.profile_path.clone(),
        build: if quick {
            layout.build.clone()
        } else {
            layout.build.join("bench/build")
        },
        quick,
        cache: layout.downloads.clone(),
        kerrighed: session.profile.kernel.kind == KernelKind::Kerrighed,
        boot_reports: layout.boot_reports(),
    };
    if cli.dry_run {
        println!("would bench in {}", bench.build.display());
        return Ok(());
    }
    host::require_root("`bench`", "it runs the stages")?;
    bench.run()?;
    Ok(())
}

/// The stage commands: `stages` in pipeline order, skipping what is up to
/// date; `--dry-run` prints the plan.
fn build(cli: &Cli, session: Session, stages: &[&str]) -> Result<()> {
    let (image, _) = session.layout.image(&session.profile.iso);
    let engine = session.engine(cli.offline);
    if cli.dry_run {
        let plan = engine.plan(stages, cli.force)?;
        println!(
            "plan (profile {}, build dir {}):",
            cli.profile,
            engine.layout.build.display()
        );
        print!("{}", plan.render());
        if let Some(why) = plan.blocked() {
            bail!("{why}");
        }
        println!("nothing was run (--dry-run)");
        return Ok(());
    }
    let options = RunOptions {
        force: cli.force,
        verbose: cli.verbose,
        install_host_tools: true,
    };
    engine.run(stages, options)?;
    if stages.contains(&"iso") {
        print_next_steps(cli, &engine.layout, &image);
    }
    Ok(())
}

/// After a build that made the image: where it is, and the two things to
/// do with it, with the options this build was given.
fn print_next_steps(cli: &Cli, layout: &Layout, image: &Path) {
    let mut options = String::new();
    if cli.profile != profile::DEFAULT {
        options.push_str(&format!(" --profile {}", cli.profile));
    }
    if let Some(dir) = &cli.build_dir {
        options.push_str(&format!(" --build-dir {}", dir.display()));
    }
    let size = std::fs::metadata(image)
        .map(|m| format!(" ({})", crate::bytes::human_bytes(m.len())))
        .unwrap_or_default();
    println!("\nthe image: {}{size}", layout.show(image));
    println!("next:");
    println!("  write it to a USB stick (checked, shown, asked, verified):");
    println!("    cargo xtask{options} usb /dev/sdX");
    println!("  or rehearse the cluster in QEMU first (node1 and two PXE nodes):");
    println!("    cargo xtask{options} qemu --nodes 2");
}

/// `fetch`: the sources into the download cache, verified; an unpinned one
/// is shown and set aside.
fn fetch_sources(cli: &Cli, session: &Session, lock_new: bool) -> Result<()> {
    let options = FetchOptions {
        offline: cli.offline,
        lock_new,
        sources_dir: session.sources_dir.clone(),
        ..FetchOptions::default()
    };
    let mut lock = SourcesLock::of_profile(&session.profile_path)?;
    let cache = Cache::new(&session.layout.downloads);
    if cli.dry_run {
        println!("would fetch into {}:", cache.dir.display());
        for s in &session.profile.sources {
            let pin = fetch::pin_of(s, &lock).unwrap_or("no pin yet");
            println!("  {:<26} {pin}", s.file);
        }
        return Ok(());
    }
    for v in fetch::fetch(&session.profile.sources, &mut lock, &cache, &options)? {
        println!("verified {}  sha256 {}", v.path.display(), v.sha256);
    }
    Ok(())
}

fn status(engine: &Engine, profile: &str) -> Result<()> {
    println!(
        "profile {profile}, build dir {}",
        engine.layout.build.display()
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (name, state, stamp) in engine.status()? {
        let detail = match &state {
            State::Done => stamp
                .map(|s| {
                    format!(
                        "built {} ago in {:.1}s",
                        human_duration(now.saturating_sub(s.finished_unix)),
                        s.seconds
                    )
                })
                .unwrap_or_default(),
            State::Stale(why) => why.join("; "),
            State::Missing => "never built".to_owned(),
        };
        println!("  {name:<9} {:<8} {detail}", state.label());
    }
    Ok(())
}

fn human_duration(secs: u64) -> String {
    match secs {
        0..=89 => format!("{secs}s"),
        90..=5399 => format!("{}min", secs / 60),
        5400..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn clean(engine: &Engine, stage: Option<&str>, all: bool, dry_run: bool) -> Result<()> {
    let targets: Vec<&str> = match (stage, all) {
        (Some(stage), false) => vec![stage],
        (None, true) => engine.stage_names(),
        _ => bail!(
            "say what to clean: a stage ({}) or --all",
            stages::BUILD.join(", ")
        ),
    };
    if dry_run {
        println!(
            "would remove the outputs and stamps of: {}",
            targets.join(", ")
        );
        if all {
            println!("would remove {}", engine.layout.build.display());
        }
        println!(
            "kept: {} (the download cache)",
            engine.layout.downloads.display()
        );
        return Ok(());
    }
    host::require_root("`clean`", "the stages' outputs are root's")?;
    if all {
        engine.clean_all()?;
        eprintln!(
            "removed {} and the image; kept the download cache {}",
            engine.layout.build.display(),
            engine.layout.downloads.display()
        );
    } else {
        for name in &targets {
            engine.clean(name)?;
            eprintln!("cleaned {name}: its outputs and stamp are gone; stages that use them are now stale");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_run_as_root_keeps_the_command_line_and_the_pre_download_directory() {
        let typed = os(&["--profile", "smoke", "build"]);
        assert_eq!(
            args_as_root(typed.clone(), Some("/srv/tarballs".into()), &[]),
            os(&[
                "--sources-dir",
                "/srv/tarballs",
                "--profile",
                "smoke",
                "build"
            ])
        );
        assert_eq!(args_as_root(typed.clone(), None, &[]), typed);
        // Given on the command line already: not twice (clap refuses that).
        let given = os(&["--sources-dir=/a", "build"]);
        assert_eq!(args_as_root(given.clone(), Some("/a".into()), &[]), given);
        // The test suite goes on where the run as the user stopped, and
        // a --from typed by the user gives way to it.
        let resume = ["--from".to_owned(), "e2e-packages".to_owned()];
        assert_eq!(
            args_as_root(os(&["test"]), None, &resume),
            os(&["test", "--from", "e2e-packages"])
        );
        for typed in [
            os(&["test", "--from", "clippy"]),
            os(&["test", "--from=clippy"]),
        ] {
            assert_eq!(
                args_as_root(typed, None, &resume),
                os(&["test", "--from", "e2e-packages"])
            );
        }
    }
}
