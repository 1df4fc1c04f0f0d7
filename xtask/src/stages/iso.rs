//! The iso stage: the live system in two squashfs images that live-boot
//! stacks, the roots (node1's, with the nodes root inside it, which node1
//! exports at boot) and the layers over them (node1's, and the nodes' that
//! node1 lays over the nodes root at boot); BIOS (isolinux) and UEFI (GRUB)
//! boot, one hybrid ISO that boots from a USB stick either way, and its
//! sha256. The roots' image is kept while the roots are unchanged.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::bytes::{human_bytes, sha256_of};
use crate::chroot::Stack;
use crate::engine::{Inputs, Output, Stage, StageRun, MIB};
use crate::files;
use crate::host::HostTool;
use crate::layout::{
    Root, IMAGE, IMAGE_CHECKSUM, LAYERS, NODE1_ROOT, NODES_LAYER, NODES_ROOT, NODES_TREE,
    STAGED_KERNEL,
};
use crate::profile::{Compression, IsoSpec};
use crate::shell::StageShell;
use crate::stages::root_kernels::newest_kernel;
use crate::stages::BuildContext;

pub(crate) struct Iso(pub Arc<BuildContext>);

/// Never in an image: kernel file systems, scratch, caches, logs.
const EXCLUDED: &[&str] = &[
    "proc/*",
    "sys/*",
    "dev/*",
    "run/*",
    "tmp/*",
    "var/tmp/*",
    "var/cache/apt/*",
    "var/lib/apt/lists/*",
    "var/log/*",
    "usr/src/*",
    // The kernel and initramfs boot from outside the root: node1's from
    // live/ on the medium, the nodes' from node1's TFTP root.
    "boot/vmlinuz-*",
    "boot/initrd.img-*",
];

/// Left out too unless `[iso] docs = true`: what a cluster never reads.
const DOCS: &[&str] = &[
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/doc/*/changelog*",
    "usr/share/doc/*/NEWS*",
    "usr/share/doc/*/README*",
    "usr/share/doc/*/examples",
];

/// A read-only view of a tree with another tree at a path inside it (a
/// node1 root or layer with the nodes' at NODES_TREE or NODES_LAYER):
/// nothing copied, owners and modes as they are. Unmounted on drop, inner
/// first (fields drop in declaration order).
struct NestedView {
    _inner: Stack,
    outer: Stack,
}

impl NestedView {
    fn mount(stacks: &Path, outer: &Path, at: &str, inner: &Path) -> Result<NestedView> {
        // The outer tree gets the directory the inner one is stacked on; an
        // overlay needs two layers at least. Both helpers go at the bottom:
        // a merged directory takes its mode and owner from the top layer.
        let mountpoint = stacks.join("mountpoint");
        files::remove_tree(&mountpoint)?;
        fs::create_dir_all(mountpoint.join(at))?;
        let empty = stacks.join("empty");
        fs::create_dir_all(&empty)?;
        let outer = Stack::mount(&[outer, &mountpoint], &stacks.join("view"))?;
        let inner = Stack::mount(&[inner, &empty], &outer.target.join(at))?;
        Ok(NestedView {
            _inner: inner,
            outer,
        })
    }

    fn target(&self) -> &Path {
        &self.outer.target
    }
}

impl Iso {
    /// The roots' image: node1's root with the nodes root at
    /// /NODES_TREE, in one squashfs, where mksquashfs stores each file the
    /// two share (kernel modules, libraries, most of Debian) once. Made
    /// again only when a root changed: `iso` after an overlay change only
    /// squashes the layers. Hard-linked into the ISO tree.
    fn squash_roots(&self, run: &StageRun, to: &Path) -> Result<()> {
        let cx = &self.0;
        let layout = &cx.layout;
        let kept = layout.iso_roots();
        let image = kept.join("filesystem.squashfs");
        // The kernel stage installs its modules and tools into the nodes
        // root: a new kernel is a new nodes root too.
        let made_from = run.digest_of(&[
            &NODE1_ROOT.input_key(),
            &NODES_ROOT.input_key(),
            &STAGED_KERNEL.input_key(),
            "profile [iso]",
        ]);
        let key = kept.join("made-from");
        if fs::read_to_string(&key).ok().as_deref() == Some(made_from.as_str()) && image.is_file() {
            run.step("the roots are unchanged: their squashfs is reused");
        } else {
            run.step(&format!(
                "squash the node1 root with the nodes root at /{NODES_TREE}: live/filesystem.squashfs"
            ));
            files::remove_tree(&kept)?;
            fs::create_dir_all(&kept)?;
            let stacks = layout.iso_stacks();
            let view = NestedView::mount(
                &stacks,
                &layout.root(Root::Node1),
                NODES_TREE,
                &layout.root(Root::Nodes),
            )?;
            let partial = files::sibling(&image, "partial");
            squash(run.shell, view.target(), &partial, &cx.profile.iso)?;
            drop(view);
            files::remove_tree(&stacks)?;
            fs::rename(&partial, &image)?;
            fs::write(&key, &made_from)?;
        }
        fs::hard_link(&image, to)
            .or_else(|_| fs::copy(&image, to).map(drop))
            .with_context(|| format!("putting {} in the ISO tree", image.display()))
    }
}

impl Stage for Iso {
    fn name(&self) -> &'static str {
        "iso"
    }
    fn about(&self) -> &'static str {
        "pack the roots and the kernel into a hybrid BIOS + UEFI ISO"
    }
    fn recipe(&self) -> u32 {
        // 2: the roots and the layers in two squashfs images.
        // 3: boot menus count down 2 s, not 5.
        // 4: zstd level 3, not 6.
        4
    }
    fn needs_root(&self) -> bool {
        true
    }
    fn host_tools(&self) -> Vec<HostTool> {
        [
            ("mksquashfs", "squashfs-tools"),
            ("xorriso", "xorriso"),
            ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
            (
                "/usr/lib/syslinux/modules/bios/ldlinux.c32",
                "syslinux-common",
            ),
            ("grub-mkstandalone", "grub-common"),
            ("/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin"),
            ("mkfs.fat", "dosfstools"),
            ("mcopy", "mtools"),
        ]
        .into_iter()
        .map(|(p, k)| HostTool::new(p, k))
        .collect()
    }
    fn inputs(&self, inputs: &mut Inputs) -> Result<()> {
        inputs.value("profile [iso]", &self.0.profile.iso);
        inputs.output_of(NODE1_ROOT);
        inputs.output_of(NODES_ROOT);
        inputs.output_of(STAGED_KERNEL);
        inputs.output_of(LAYERS);
        Ok(())
    }
    fn outputs(&self) -> Vec<Output> {
        let BuildContext {
            profile, layout, ..
        } = &*self.0;
        let (image, checksum) = layout.image(&profile.iso);
        // The smoke image is 226 MiB.
        vec![
            Output::file(IMAGE.name, image).estimate(400 * MIB),
            Output::file(IMAGE_CHECKSUM.name, checksum),
        ]
    }
    fn working_space(&self) -> Vec<(PathBuf, u64)> {
        // The roots' squashfs (kept between runs) and the ISO tree.
        vec![(self.0.layout.iso_tree(), 512 * MIB)]
    }
    fn run(&self, run: &mut StageRun) -> Result<()> {
        let cx = &self.0;
        let layout = &cx.layout;
        let spec = &cx.profile.iso;
        let staging = layout.iso_tree();
        files::remove_tree(&staging)?;
        for dir in ["live", "isolinux", "boot/grub", "EFI/BOOT"] {
            fs::create_dir_all(staging.join(dir))?;
        }
        // Two squashfs images, stacked by live-boot in the order
        // live/filesystem.module gives: the roots, then the layers over them.
        self.squash_roots(run, &staging.join("live/filesystem.squashfs"))?;
        run.step(&format!(
            "squash the layers, the nodes' at /{NODES_LAYER}: live/layers.squashfs"
        ));
        // Read-only views, as for the roots: owners and modes as the node1
        // stage made them (the cluster user's home, its ssh key).
        let stacks = layout.iso_stacks();
        let view = NestedView::mount(
            &stacks,
            &layout.layer(Root::Node1),
            NODES_LAYER,
            &layout.layer(Root::Nodes),
        )?;
        squash(
            run.shell,
            view.target(),
            &staging.join("live/layers.squashfs"),
            spec,
        )?;
        drop(view);
        files::remove_tree(&stacks)?;
        fs::write(
            staging.join("live/filesystem.module"),
            "filesystem.squashfs\nlayers.squashfs\n",
        )?;

        run.step("the live kernel and initramfs, BIOS and UEFI boot");
        let (vmlinuz, initrd) = live_kernel(&layout.root(Root::Node1))?;
        fs::copy(&vmlinuz, staging.join("live/vmlinuz")).context("copying the live kernel")?;
        fs::copy(&initrd, staging.join("live/initrd.img")).context("copying the live initramfs")?;
        for (from, name) in [
            ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux.bin"),
            ("/usr/lib/syslinux/modules/bios/ldlinux.c32", "ldlinux.c32"),
            ("/usr/lib/syslinux/modules/bios/menu.c32", "menu.c32"),
            ("/usr/lib/syslinux/modules/bios/libutil.c32", "libutil.c32"),
        ] {
            fs::copy(from, staging.join("isolinux").join(name))
                .with_context(|| format!("copying {from}"))?;
        }
        fs::write(staging.join("isolinux/isolinux.cfg"), isolinux_cfg(spec))?;
        let grub_cfg = grub_cfg(spec);
        fs::write(staging.join("boot/grub/grub.cfg"), &grub_cfg)?;
        efi_boot(run.shell, &staging, &grub_cfg)?;

        run.step("the hybrid ISO (BIOS + UEFI, MBR + GPT)");
        let image = run.output(IMAGE.name)?.to_owned();
        hybrid_iso(run.shell, &spec.volume, &staging, &image)?;
        files::remove_tree(&staging)?;

        let sum = sha256_of(&image)?;
        let name = &spec.output;
        fs::write(run.output(IMAGE_CHECKSUM.name)?, format!("{sum}  {name}\n"))
            .context("writing the checksum")?;
        let size = fs::metadata(&image)?.len();
        let final_path = layout.out.join(name);
        run.shell.note(&format!(
            "{} {} sha256 {sum}",
            final_path.display(),
            human_bytes(size)
        ));
        // What to do with it is said once the whole command is done.
        eprintln!(
            "==> iso: {} ({}), sha256 {sum}",
            final_path.display(),
            human_bytes(size),
        );
        Ok(())
    }
}

/// The hybrid image of `tree` (which holds isolinux/isolinux.bin and
/// boot/efiboot.img): El Torito for BIOS and UEFI, an isohybrid MBR and a
/// GPT, so the same bytes boot from a CD and from a `dd`'ed USB stick.
pub(crate) fn hybrid_iso(
    shell: &StageShell,
    volume: &str,
    tree: &Path,
    image: &Path,
) -> Result<()> {
    let sh = shell.sh();
    shell.run(cmd!(
        sh,
        "xorriso -as mkisofs -iso-level 3 -full-iso9660-filenames -joliet -rational-rock
            -volid {volume}
            -eltorito-boot isolinux/isolinux.bin -eltorito-catalog isolinux/boot.cat
            -no-emul-boot -boot-load-size 4 -boot-info-table
            -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin
            -eltorito-alt-boot -e boot/efiboot.img -no-emul-boot -isohybrid-gpt-basdat
            -output {image} {tree}"
    ))
}

fn squash(shell: &StageShell, from: &Path, to: &Path, spec: &IsoSpec) -> Result<()> {
    let sh = shell.sh();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .to_string();
    let comp: &[&str] = match spec.compression {
        // Level 3, zstd's own default: the smoke roots in 1.8 s and 6% larger
        // than level 6's (4.3 s); level 15 takes many times as long.
        Compression::Zstd => &["-comp", "zstd", "-Xcompression-level", "3"],
        Compression::Xz => &["-comp", "xz"],
    };
    let mut patterns: Vec<&str> = EXCLUDED.to_vec();
    if !spec.docs {
        patterns.extend(DOCS);
    }
    // The same for the nodes root inside, but for its /dev: a node whose
    // kernel has no devtmpfs (2.6.20) opens /dev/console there before init.
    let excluded: Vec<String> = patterns
        .iter()
        .map(|p| p.to_string())
        .chain(
            patterns
                .iter()
                .filter(|p| **p != "dev/*")
                .map(|p| format!("{NODES_TREE}/{p}")),
        )
        .collect();
    shell.run(cmd!(
        sh,
        "mksquashfs {from} {to} -noappend -no-progress -processors {cores} {comp...} -wildcards -e {excluded...}"
    ))
}

/// The node1 root's newest kernel and its initramfs (made with live-boot in).
fn live_kernel(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let release = newest_kernel(root, "node1")?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    let initrd = root.join(format!("boot/initrd.img-{release}"));
    if !initrd.exists() {
        bail!("the node1 root has no initramfs for {release}");
    }
    if !root.join("usr/share/initramfs-tools/scripts/live").exists() {
        bail!("live-boot is not in the node1 root: add live-boot to [node1] packages");
    }
    Ok((vmlinuz, initrd))
}

/// The kernel command line of the live system: the console on the screen
/// and on the first serial port (the boot test reads it).
fn live_cmdline(toram: bool) -> String {
    let mut s = String::from("boot=live console=tty0 console=ttyS0,115200");
    if toram {
        s.push_str(" toram");
    }
    s
}

/// BIOS: isolinux's menu. The first entry boots node1 after 2 seconds
/// (node1 starts with nobody typing; a key press stops the count).
pub(crate) fn isolinux_cfg(spec: &IsoSpec) -> String {
    format!(
        "SERIAL 0 115200\n\
         # Rendered by krgiso (cargo xtask iso).\n\
         UI menu.c32\n\
         MENU TITLE krgiso {volume}: Kerrighed cluster, node1\n\
         DEFAULT node1\n\
         TIMEOUT 20\n\
         \n\
         LABEL node1\n  MENU LABEL Start node1 (serves the cluster by itself)\n  KERNEL /live/vmlinuz\n  APPEND initrd=/live/initrd.img {}\n\
         \n\
         LABEL node1-toram\n  MENU LABEL Start node1, copied to RAM (the stick can be removed)\n  KERNEL /live/vmlinuz\n  APPEND initrd=/live/initrd.img {}\n\
         \n\
         LABEL disk\n  MENU LABEL Boot from the first hard disk\n  LOCALBOOT 0x80\n",
        live_cmdline(false),
        live_cmdline(true),
        volume = spec.volume
    )
}

/// UEFI: GRUB's menu, the same entries.
pub(crate) fn grub_cfg(spec: &IsoSpec) -> String {
    format!(
        "# Rendered by krgiso (cargo xtask iso).\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         search --no-floppy --set=root --label {volume}\n\
         set default=0\n\
         set timeout=2\n\
         \n\
         menuentry \"Start node1 (serves the cluster by itself)\" {{\n    linux /live/vmlinuz {}\n    initrd /live/initrd.img\n}}\n\
         menuentry \"Start node1, copied to RAM (the stick can be removed)\" {{\n    linux /live/vmlinuz {}\n    initrd /live/initrd.img\n}}\n\
         menuentry \"Boot from the first hard disk (leave krgiso)\" {{\n    exit\n}}\n",
        live_cmdline(false),
        live_cmdline(true),
        volume = spec.volume
    )
}

/// A standalone GRUB for x86_64 UEFI with the menu built in, on a FAT EFI
/// System Partition image that xorriso makes the ISO's EFI boot entry.
fn efi_boot(shell: &StageShell, staging: &Path, grub_cfg: &str) -> Result<()> {
    let sh = shell.sh();
    let work = staging.with_file_name("iso-efi");
    files::remove_tree(&work)?;
    fs::create_dir_all(&work)?;
    let cfg = work.join("grub.cfg");
    fs::write(&cfg, grub_cfg)?;
    let efi = staging.join("EFI/BOOT/BOOTX64.EFI");
    let embedded = format!("boot/grub/grub.cfg={}", cfg.display());
    shell.run(cmd!(
        sh,
        "grub-mkstandalone -O x86_64-efi --locales= --fonts= --themes= -o {efi} {embedded}"
    ))?;
    let img = staging.join("boot/efiboot.img");
    let kib = (fs::metadata(&efi)?.len() / 1024 + 512).to_string();
    shell.run(cmd!(sh, "mkfs.fat -C -n EFIBOOT {img} {kib}"))?;
    shell.run(cmd!(sh, "mmd -i {img} ::/EFI ::/EFI/BOOT"))?;
    shell.run(cmd!(sh, "mcopy -i {img} {efi} ::/EFI/BOOT/BOOTX64.EFI"))?;
    files::remove_tree(&work)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, text: &str) {
        crate::golden::check(&format!("stages/iso-golden/{name}"), text);
    }

    #[test]
    fn boot_menus_match_their_golden_files() {
        let p = crate::profile::Profile::load(
            &crate::profile::resolve(crate::profile::DEFAULT, &crate::project_root()).unwrap(),
        )
        .unwrap();
        golden("isolinux.cfg", &isolinux_cfg(&p.iso));
        golden("grub.cfg", &grub_cfg(&p.iso));
        crate::golden::no_stale_files(
            "stages/iso-golden",
            &["isolinux.cfg", "grub.cfg"].map(|n| format!("stages/iso-golden/{n}")),
        );
    }

    #[test]
    fn both_menus_put_the_console_on_screen_and_serial_and_offer_toram() {
        let p = crate::profile::Profile::load(&crate::project_root().join("profiles/smoke.toml"))
            .unwrap();
        for cfg in [isolinux_cfg(&p.iso), grub_cfg(&p.iso)] {
            assert_eq!(
                cfg.matches("boot=live console=tty0 console=ttyS0,115200")
                    .count(),
                2,
                "{cfg}"
            );
            assert_eq!(cfg.matches(" toram").count(), 1, "{cfg}");
        }
        assert!(
            isolinux_cfg(&p.iso).starts_with("SERIAL 0 115200\n"),
            "SERIAL must come first"
        );
        assert!(grub_cfg(&p.iso).contains("--label KRGISO_SMOKE"));
    }
}
