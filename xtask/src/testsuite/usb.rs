//! End-to-end check of `cargo xtask usb`, as root, driven through the xtask
//! binary: refusals on loop devices (not removable, mounted, too small), a
//! write and read-back to a file, and `--data` on a file then seen through
//! a loop device. Only loop devices and files under `build/e2e/usb` are
//! ever written, never a disk; every loop device and mount is released
//! however the check ends (and leftovers of a killed run by the next run).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use super::smoke::{check_shell, xtask_binary, Timings};
use crate::bytes::human_bytes;
use crate::bytes::sha256_hex;
use crate::chroot::{self, SystemMounts};
use crate::files;
use crate::host::{self, HostTool};
use crate::layout::Layout;
use crate::profile::{self, Profile};
use crate::shell::StageShell;
use crate::stages::iso;
use crate::usb::{DataPartition, DATA_LABEL, MBR_ENTRY3};

const MIB: u64 = 1 << 20;

/// `cargo xtask usb` for real: see the module comment. Returns how long
/// each part took.
pub(crate) fn usb(project: &Path) -> Result<Timings> {
    usb_with(project, &xtask_binary()?)
}

fn usb_with(project: &Path, exe: &Path) -> Result<Timings> {
    let s = check_shell(project, "e2e-usb")?;
    host::ensure_tools(
        &[
            HostTool::new("xorriso", "xorriso"),
            HostTool::new("/usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
            HostTool::new("/usr/lib/ISOLINUX/isohdpfx.bin", "isolinux"),
            HostTool::new("mkfs.fat", "dosfstools"),
            HostTool::new("mkfs.ext4", "e2fsprogs"),
            HostTool::new("losetup", "mount"),
            HostTool::new("partx", "util-linux"),
            HostTool::new("blkid", "util-linux"),
        ],
        true,
        s.log_path(),
    )?;
    let work = project.join("build/e2e/usb");
    release_leftovers(&s, &work)?;
    files::remove_tree(&work)?;
    fs::create_dir_all(&work)?;
    let mut timings = Vec::new();

    s.step("a small hybrid image (xorriso, isohybrid MBR + EFI) in a build dir");
    let t = Instant::now();
    let build = work.join("build");
    let image = SyntheticImage::make(&s, project, &work, &build)?;
    timings.push(("make a synthetic hybrid image".to_owned(), secs(t)));
    let run = UsbRun {
        exe: exe.to_owned(),
        build,
        s: &s,
    };

    s.step("refused: a loop device is not removable");
    let t = Instant::now();
    run.refused_on_loop(&work, "fixed.img", 64 * MIB, "is not removable")?;
    timings.push(("refuse a loop device (not removable)".to_owned(), secs(t)));

    s.step("refused: a loop device with a mounted file system");
    let t = Instant::now();
    {
        let backing = sized_file(&work.join("mounted.img"), 64 * MIB)?;
        let sh = s.sh();
        s.run(cmd!(sh, "mkfs.ext4 -q -F {backing}"))?;
        let lo = LoopDevice::attach(&s, &backing, false)?;
        let mnt = work.join("mnt");
        let _mounted = Mounted::mount(&s, &lo.node, &mnt)?;
        fs::write(mnt.join("keep"), "still here")?;
        let said = run.expect_refusal(&[lo.node_str(), "--yes"])?;
        let want = format!("{} is mounted on {}", lo.node_str(), mnt.display());
        ensure!(said.contains(&want), "expected `{want}`, got:\n{said}");
        ensure!(
            fs::read_to_string(mnt.join("keep"))? == "still here",
            "the mounted file system changed"
        );
    }
    timings.push(("refuse a mounted loop device".to_owned(), secs(t)));

    s.step("refused: a loop device smaller than the image");
    let t = Instant::now();
    let small = 2 * MIB;
    let too_small = format!(
        "is too small: {}, the image needs {}",
        human_bytes(small),
        human_bytes(image.bytes.len() as u64)
    );
    run.refused_on_loop(&work, "small.img", small, &too_small)?;
    timings.push(("refuse a too small loop device".to_owned(), secs(t)));

    s.step("a file: no --yes without a terminal, a dry run, then the write");
    let t = Instant::now();
    let stick = work.join("stick.img");
    let stick_arg = stick.to_string_lossy().into_owned();
    let said = run.expect_refusal(&[&stick_arg, "--allow-file"])?;
    ensure!(
        said.contains("pass --yes"),
        "expected `pass --yes`, got:\n{said}"
    );
    ensure!(!stick.exists(), "an unconfirmed write created {stick_arg}");
    let said = run.xtask(&["--dry-run", "usb", &stick_arg, "--allow-file"])?;
    ensure!(
        said.contains("nothing was written (--dry-run)") && !stick.exists(),
        "the dry run wrote something:\n{said}"
    );
    let said = run.xtask(&["usb", &stick_arg, "--allow-file", "--yes"])?;
    let want = format!("verified sha256 {}", image.sha256);
    ensure!(said.contains(&want), "expected `{want}`, got:\n{said}");
    ensure!(
        fs::read(&stick)? == image.bytes,
        "{stick_arg} does not hold the image's bytes"
    );
    timings.push(("write and read back to a file".to_owned(), secs(t)));

    s.step("--data on a 256 MiB file, then its partitions through a loop device");
    let t = Instant::now();
    let stick = sized_file(&work.join("stick-data.img"), 256 * MIB)?;
    let stick_arg = stick.to_string_lossy().into_owned();
    let said = run.xtask(&["usb", &stick_arg, "--allow-file", "--yes", "--data"])?;
    ensure!(said.contains(&want), "expected `{want}`, got:\n{said}");
    check_data_partition(&s, &stick, &image)?;
    timings.push((
        "write with --data, check KRGISO-DATA and the image".to_owned(),
        secs(t),
    ));

    files::remove_tree(&work)?;
    Ok(timings)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The image in a build dir where `--profile smoke --build-dir` finds it.
struct SyntheticImage {
    bytes: Vec<u8>,
    sha256: String,
}

impl SyntheticImage {
    fn make(s: &StageShell, project: &Path, work: &Path, build: &Path) -> Result<SyntheticImage> {
        let smoke = Profile::load(&profile::resolve("smoke", project)?)?;
        let (path, checksum) = Layout::new(project, Some(build)).image(&smoke.iso);
        let tree = work.join("tree");
        fs::create_dir_all(tree.join("isolinux"))?;
        fs::create_dir_all(tree.join("boot"))?;
        fs::copy(
            "/usr/lib/ISOLINUX/isolinux.bin",
            tree.join("isolinux/isolinux.bin"),
        )?;
        // Bytes that differ everywhere, so a misplaced block shows.
        let payload: Vec<u8> = (0u32..3 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(tree.join("payload"), payload)?;
        let efi = tree.join("boot/efiboot.img");
        let out = path.parent().context("the image path has no directory")?;
        fs::create_dir_all(out)?;
        let sh = s.sh();
        s.run(cmd!(sh, "mkfs.fat -C {efi} 1024"))?;
        iso::hybrid_iso(s, "KRGISO_E2E_USB", &tree, &path)?;
        let bytes = fs::read(&path)?;
        let sha256 = sha256_hex(&bytes);
        let name = &smoke.iso.output;
        fs::write(&checksum, format!("{sha256}  {name}\n"))?;
        s.note(&format!(
            "synthetic image {} ({} bytes) sha256 {sha256}",
            path.display(),
            bytes.len()
        ));
        Ok(SyntheticImage { bytes, sha256 })
    }
}

/// `xtask --profile smoke --build-dir B ...` with no terminal on stdin.
struct UsbRun<'a> {
    exe: PathBuf,
    build: PathBuf,
    s: &'a StageShell,
}

impl UsbRun<'_> {
    /// Runs it; returns (succeeded, everything it printed).
    fn output(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = Command::new(&self.exe)
            .args(["--profile", "smoke", "--build-dir"])
            .arg(&self.build)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.exe.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        self.s.note(&format!(
            "$ xtask {} [{}]\n{text}",
            args.join(" "),
            out.status
        ));
        Ok((out.status.success(), text))
    }

    /// Must succeed.
    fn xtask(&self, args: &[&str]) -> Result<String> {
        let (ok, text) = self.output(args)?;
        ensure!(ok, "`xtask {}` failed:\n{text}", args.join(" "));
        Ok(text)
    }

    /// `usb ARGS` must fail; returns what it printed.
    fn expect_refusal(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["usb"];
        all.extend_from_slice(args);
        let (ok, text) = self.output(&all)?;
        ensure!(!ok, "`xtask {}` succeeded:\n{text}", all.join(" "));
        Ok(text)
    }

    /// `usb NODE --yes` on a loop device over `work/name`, `len` zero bytes,
    /// must be refused saying `NODE says`, and leave the file all zeros.
    fn refused_on_loop(&self, work: &Path, name: &str, len: u64, says: &str) -> Result<()> {
        let backing = sized_file(&work.join(name), len)?;
        let lo = LoopDevice::attach(self.s, &backing, false)?;
        let said = self.expect_refusal(&[lo.node_str(), "--yes"])?;
        let want = format!("{} {says}", lo.node_str());
        ensure!(said.contains(&want), "expected `{want}`, got:\n{said}");
        ensure_zeros(&backing, "a refused write")
    }
}

/// A file of `len` zero bytes (sparse).
fn sized_file(path: &Path, len: u64) -> Result<PathBuf> {
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(len)?;
    Ok(path.to_owned())
}

fn ensure_zeros(path: &Path, after: &str) -> Result<()> {
    let bytes = fs::read(path)?;
    ensure!(
        bytes.iter().all(|&b| b == 0),
        "{after} changed {}",
        path.display()
    );
    Ok(())
}

/// A loop device over a file, detached when dropped.
pub(super) struct LoopDevice {
    node: PathBuf,
}

impl LoopDevice {
    pub(super) fn attach(s: &StageShell, file: &Path, partscan: bool) -> Result<LoopDevice> {
        let sh = s.sh();
        let scan: &[&str] = if partscan { &["-P"] } else { &[] };
        let node = s.read(cmd!(sh, "losetup {scan...} -f --show {file}"))?;
        Ok(LoopDevice {
            node: PathBuf::from(node.trim()),
        })
    }

    pub(super) fn node_str(&self) -> &str {
        self.node.to_str().unwrap_or_default()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.node)
            .stderr(Stdio::null())
            .status();
    }
}

/// A mount, undone (lazily if busy) when dropped.
pub(super) struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    pub(super) fn mount(s: &StageShell, device: &Path, dir: &Path) -> Result<Mounted> {
        fs::create_dir_all(dir)?;
        let sh = s.sh();
        s.run(cmd!(sh, "mount {device} {dir}"))?;
        Ok(Mounted {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        chroot::release(&SystemMounts, &self.dir);
    }
}

/// What a killed earlier run left: mounts under `work`, loop devices over
/// its files.
pub(super) fn release_leftovers(s: &StageShell, work: &Path) -> Result<()> {
    chroot::release_stale(work, &SystemMounts)?;
    let files: Vec<PathBuf> = fs::read_dir(work)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    let sh = s.sh();
    for file in files {
        let nodes = s.read(cmd!(sh, "losetup -n -O NAME -j {file}"))?;
        for node in nodes.lines().map(str::trim).filter(|n| !n.is_empty()) {
            s.note(&format!(
                "detaching {node}, left over over {}",
                file.display()
            ));
            drop(LoopDevice {
                node: PathBuf::from(node),
            });
        }
    }
    Ok(())
}

/// The file `usb --data` wrote: through a loop device its third partition
/// is the KRGISO-DATA ext4 file system, starting at the first MiB after the
/// image; the image's bytes are intact but for MBR entry 3, which is ours.
fn check_data_partition(s: &StageShell, stick: &Path, image: &SyntheticImage) -> Result<()> {
    let len = image.bytes.len();
    let planned = DataPartition::plan(
        &image.bytes[..512],
        len as u64,
        fs::metadata(stick)?.len(),
        "the file",
    )?;
    let written = fs::read(stick)?;
    let head = &written[..len];
    ensure!(
        head[MBR_ENTRY3..MBR_ENTRY3 + 16] == planned.entry(),
        "MBR entry 3 is not the KRGISO-DATA entry: {:02x?}",
        &head[MBR_ENTRY3..MBR_ENTRY3 + 16]
    );
    let mut restored = head.to_vec();
    restored[MBR_ENTRY3..MBR_ENTRY3 + 16]
        .copy_from_slice(&image.bytes[MBR_ENTRY3..MBR_ENTRY3 + 16]);
    ensure!(
        sha256_hex(&restored) == image.sha256,
        "the image's bytes changed beyond MBR entry 3"
    );

    let lo = LoopDevice::attach(s, stick, true)?;
    let part = PathBuf::from(format!("{}p3", lo.node_str()));
    if !part.exists() {
        // A kernel without MBR partition support (CONFIG_MSDOS_PARTITION)
        // scans nothing: have partx read the table and add the partitions
        // (partition 2, inside partition 1, is refused: not an error here).
        let node = &lo.node;
        let sh = s.sh();
        let _ = cmd!(sh, "partx -a {node}")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .run();
    }
    for _ in 0..20 {
        if part.exists() {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    ensure!(
        part.exists(),
        "no {} after losetup -P (and partx -a)",
        part.display()
    );
    let sh = s.sh();
    let probe = s.read(cmd!(sh, "blkid -p -o export {part}"))?;
    ensure!(
        probe.lines().any(|l| l == format!("LABEL={DATA_LABEL}"))
            && probe.lines().any(|l| l == "TYPE=ext4"),
        "{} is not an ext4 file system labelled {DATA_LABEL}:\n{probe}",
        part.display()
    );
    let name = part
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = Path::new("/sys/class/block").join(&name);
    let start: u64 = fs::read_to_string(sys.join("start"))?.trim().parse()?;
    let size: u64 = fs::read_to_string(sys.join("size"))?.trim().parse()?;
    let want_start = (len as u64).div_ceil(MIB) * MIB / 512;
    ensure!(
        start == want_start && start + size == 256 * MIB / 512,
        "{name} spans sectors {start}..{}, expected {want_start}..{}",
        start + size,
        256 * MIB / 512
    );
    Ok(())
}
