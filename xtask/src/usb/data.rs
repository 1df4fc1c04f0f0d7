//! `--data`: the KRGISO-DATA partition after the image (MBR entry 3 and an
//! ext4 file system inside it), where node1 keeps the nodes' root.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::bytes::human_bytes;
use crate::shell::StageShell;

use super::{UsbTarget, MIB, SECTOR};

/// The label of the partition `--data` adds; node1's boot service looks for it.
pub(crate) const DATA_LABEL: &str = "KRGISO-DATA";

/// `--data` is refused when less than this would be free after the image.
pub(crate) const DATA_MIN_FREE: u64 = 64 * MIB;

/// Where MBR partition entry 3 lies in the first sector.
pub(crate) const MBR_ENTRY3: usize = 446 + 2 * 16;

/// The MBR partition `--data` adds: entry 3, from the first 1 MiB boundary
/// after the image to the end of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataPartition {
    pub(crate) start_lba: u32,
    pub(crate) sectors: u32,
}

impl DataPartition {
    /// Plans the partition after an image whose first sector is `mbr` on a
    /// target of `target_len` bytes. Refuses when the image has no MBR, less
    /// than [`DATA_MIN_FREE`] would be free, entry 3 or 4 is used by
    /// something else, or entry 1 or 2 reaches into the space.
    pub(crate) fn plan(
        mbr: &[u8],
        image_len: u64,
        target_len: u64,
        target: &str,
    ) -> Result<DataPartition> {
        if mbr.len() < 512 || mbr[510..512] != [0x55, 0xAA] {
            bail!("--data: the image has no MBR (no 0x55AA signature in its first sector), so it is not a hybrid image a partition can be added to: rebuild it with `cargo xtask iso`");
        }
        let start = image_len.div_ceil(MIB) * MIB;
        let free = target_len.saturating_sub(start);
        if free < DATA_MIN_FREE {
            bail!(
                "--data: only {} would be free on {target} after the image ({}, rounded up to {}); the data partition needs at least {}: use a bigger stick or leave out --data",
                human_bytes(free),
                human_bytes(image_len),
                human_bytes(start),
                human_bytes(DATA_MIN_FREE)
            );
        }
        let start_lba = u32::try_from(start / SECTOR).context(
            "--data: the image ends beyond what an MBR can address (2 TiB): leave out --data",
        )?;
        // An MBR addresses at most 2^32 sectors: on a bigger disk, stop there.
        let end_lba = (target_len / SECTOR).min(u64::from(u32::MAX));
        let planned = DataPartition {
            start_lba,
            sectors: (end_lba - u64::from(start_lba)) as u32,
        };
        for (i, entry) in mbr_entries(mbr).iter().enumerate() {
            if entry.iter().all(|&b| b == 0) {
                continue;
            }
            let first = u32::from_le_bytes([entry[8], entry[9], entry[10], entry[11]]);
            let count = u32::from_le_bytes([entry[12], entry[13], entry[14], entry[15]]);
            let what = format!(
                "MBR partition {} of the image (type 0x{:02x}, sectors {first}..{})",
                i + 1,
                entry[4],
                u64::from(first) + u64::from(count)
            );
            match i {
                2 if *entry == planned.entry() => {}
                2 | 3 => bail!(
                    "--data: {what} is already used, not by krgiso: adding {DATA_LABEL} would overwrite it; write the image without --data"
                ),
                _ if u64::from(first) + u64::from(count) > u64::from(start_lba) => bail!(
                    "--data: {what} reaches past the image's end into the space for {DATA_LABEL}: write the image without --data"
                ),
                _ => {}
            }
        }
        Ok(planned)
    }

    /// The 16 bytes of the MBR entry: not bootable, CHS "beyond 1024
    /// cylinders" placeholders, type 0x83 (Linux), LBA start and count.
    pub(crate) fn entry(&self) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[4] = 0x83;
        e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&self.start_lba.to_le_bytes());
        e[12..16].copy_from_slice(&self.sectors.to_le_bytes());
        e
    }

    pub(crate) fn offset(&self) -> u64 {
        u64::from(self.start_lba) * SECTOR
    }

    pub(crate) fn bytes(&self) -> u64 {
        u64::from(self.sectors) * SECTOR
    }
}

pub(super) fn mbr_entries(mbr: &[u8]) -> [[u8; 16]; 4] {
    let mut out = [[0u8; 16]; 4];
    for (i, e) in out.iter_mut().enumerate() {
        e.copy_from_slice(&mbr[446 + 16 * i..446 + 16 * (i + 1)]);
    }
    out
}

/// Writes MBR entry 3 through the descriptor the image was written with:
/// the device whose number was checked when it was opened, still held
/// with O_EXCL.
pub(super) fn write_entry(out: &mut File, d: &DataPartition, shown: &str) -> Result<()> {
    out.seek(SeekFrom::Start(MBR_ENTRY3 as u64))?;
    out.write_all(&d.entry())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing the partition table of {shown}"))
}

/// Makes the ext4 file system inside partition 3, through mkfs's offset
/// (no partition node or loop device needed).
pub(super) fn make_filesystem(
    shell: &StageShell,
    target: &UsbTarget,
    d: &DataPartition,
) -> Result<()> {
    let node = target.path();
    shell.step(&format!(
        "make the {DATA_LABEL} file system: {} from {}",
        human_bytes(d.bytes()),
        human_bytes(d.offset())
    ));
    let sh = shell.sh();
    // nodiscard: a discard would be slow on a stick and has nothing to gain
    // on a device the image was just written to.
    let extended = format!("offset={},nodiscard", d.offset());
    let kib = format!("{}k", d.bytes() / 1024);
    shell
        .run(cmd!(
            sh,
            "mkfs.ext4 -F -q -L {DATA_LABEL} -E {extended} {node} {kib}"
        ))
        .with_context(|| format!("making the {DATA_LABEL} file system on {}", node.display()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};

    const GIB: u64 = 1 << 30;

    /// The first sector of a 5 MiB xorriso hybrid: partition 1 (type 0)
    /// over the image, partition 2 the EFI image.
    pub(in crate::usb) fn hybrid_mbr(image_sectors: u32) -> [u8; 512] {
        let mut mbr = [0u8; 512];
        let e1 = &mut mbr[446..462];
        e1[0] = 0x80;
        e1[8..12].copy_from_slice(&0u32.to_le_bytes());
        e1[12..16].copy_from_slice(&image_sectors.to_le_bytes());
        let e2 = &mut mbr[462..478];
        e2[4] = 0xef;
        e2[8..12].copy_from_slice(&136u32.to_le_bytes());
        e2[12..16].copy_from_slice(&2048u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        mbr
    }

    #[test]
    fn the_data_partition_starts_at_the_next_mib_and_runs_to_the_end() {
        let image = 5 * MIB + 4096;
        let mbr = hybrid_mbr((image / 512) as u32);
        let target = 256 * MIB + 300; // a trailing part-sector is not used
        let d = DataPartition::plan(&mbr, image, target, "t").unwrap();
        assert_eq!(d.offset(), 6 * MIB);
        assert_eq!(d.start_lba, 6 * 2048);
        assert_eq!(u64::from(d.start_lba) + u64::from(d.sectors), 256 * 2048);
        let e = d.entry();
        assert_eq!(e[0], 0, "not bootable");
        assert_eq!(e[4], 0x83);
        assert_eq!(&e[1..4], &[0xFE, 0xFF, 0xFF]);
        assert_eq!(&e[8..12], &(6u32 * 2048).to_le_bytes());
        assert_eq!(&e[12..16], &(250u32 * 2048).to_le_bytes());

        // An image ending on a boundary: the partition starts right there.
        let d = DataPartition::plan(&hybrid_mbr(5 * 2048), 5 * MIB, GIB, "t").unwrap();
        assert_eq!(d.offset(), 5 * MIB);
        // Our own entry already there (written before) is fine.
        let mut ours = hybrid_mbr(5 * 2048);
        ours[MBR_ENTRY3..MBR_ENTRY3 + 16].copy_from_slice(&d.entry());
        assert_eq!(DataPartition::plan(&ours, 5 * MIB, GIB, "t").unwrap(), d);
    }

    #[test]
    fn the_data_partition_needs_64_mib_after_the_image() {
        let mbr = hybrid_mbr(5 * 2048);
        let err = DataPartition::plan(&mbr, 5 * MIB, 5 * MIB + 63 * MIB, "/dev/sdb")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("only 63.0 MiB would be free on /dev/sdb") && err.contains("64.0 MiB"),
            "{err}"
        );
        DataPartition::plan(&mbr, 5 * MIB, 5 * MIB + 64 * MIB, "/dev/sdb").unwrap();
    }

    #[test]
    fn the_data_partition_is_refused_when_entries_are_taken() {
        let mut used3 = hybrid_mbr(5 * 2048);
        used3[MBR_ENTRY3 + 4] = 0x0c;
        used3[MBR_ENTRY3 + 12] = 1;
        let err = DataPartition::plan(&used3, 5 * MIB, GIB, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MBR partition 3 of the image (type 0x0c")
                && err.contains("not by krgiso"),
            "{err}"
        );

        let mut used4 = hybrid_mbr(5 * 2048);
        used4[446 + 48 + 4] = 0x83;
        let err = DataPartition::plan(&used4, 5 * MIB, GIB, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("MBR partition 4"), "{err}");

        // Partition 1 reaching past the image into the data space.
        let long = hybrid_mbr(20 * 2048);
        let err = DataPartition::plan(&long, 5 * MIB, GIB, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MBR partition 1") && err.contains("reaches past"),
            "{err}"
        );

        let mut no_mbr = hybrid_mbr(5 * 2048);
        no_mbr[510] = 0;
        let err = DataPartition::plan(&no_mbr, 5 * MIB, GIB, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no MBR"), "{err}");
    }

    #[test]
    fn entry_3_is_written_in_place_and_nothing_else_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("stick");
        let before: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
        fs::write(&path, &before).unwrap();
        let d = DataPartition {
            start_lba: 2048,
            sectors: 4096,
        };
        let mut out = OpenOptions::new().write(true).open(&path).unwrap();
        write_entry(&mut out, &d, "stick").unwrap();
        drop(out);
        let after = fs::read(&path).unwrap();
        assert_eq!(after.len(), before.len());
        assert_eq!(&after[MBR_ENTRY3..MBR_ENTRY3 + 16], &d.entry());
        assert_eq!(after[..MBR_ENTRY3], before[..MBR_ENTRY3]);
        assert_eq!(after[MBR_ENTRY3 + 16..], before[MBR_ENTRY3 + 16..]);
        assert_eq!(mbr_entries(&after[..512])[2], d.entry());
    }
}
