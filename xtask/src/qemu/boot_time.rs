//! Where a VM's boot went, as its own init measured it: systemd-analyze's
//! summary, the critical chain up to the unit that matters (node1's
//! service, a node's default target) and the slowest units. Read on the
//! guest after the boot test's milestones, kept in `report.json`, and
//! printed by `bench`.

use serde::{Deserialize, Serialize};

/// A VM's boot as systemd-analyze tells it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct BootTime {
    /// `systemd-analyze time`'s first line.
    pub(crate) summary: String,
    /// From the unit asked about down to the first unit of the boot.
    pub(crate) critical_chain: Vec<ChainLink>,
    /// `systemd-analyze blame`: the units that took longest, slowest first.
    pub(crate) slowest: Vec<UnitTime>,
    /// Units still starting when the boot had not finished 30 s after
    /// multi-user.target (`systemctl list-jobs`).
    pub(crate) unfinished: Vec<String>,
}

/// One unit of the critical chain: when it became active (seconds since
/// the kernel handed over to init) and how long it took to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChainLink {
    pub(crate) unit: String,
    pub(crate) at: Option<f64>,
    pub(crate) took: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct UnitTime {
    pub(crate) unit: String,
    pub(crate) seconds: f64,
}

/// Where node1's `krgiso-boot-time` leaves its files.
pub(super) const NODE1_DIR: &str = "/run/krgiso/boot";
/// Where a node's are, under the nodes' root (one directory per address).
pub(super) const NODES_DIR: &str = "var/lib/krgiso/boot";
const PART: &str = "KRGISO-BOOT-PART";

/// A shell command that waits up to 90 s for `dir` (the guest writes it
/// once its boot has finished, or 30 s after multi-user.target) and prints
/// its files; nothing when it never came.
pub(super) fn read_command(dir: &str) -> String {
    // The marker is typed split, so the echo of the command never matches.
    let part = format!("echo {}''{}", &PART[..6], &PART[6..]);
    format!(
        "i=0; while [ ! -d {dir} ] && [ $i -lt 90 ]; do sleep 1; i=$((i+1)); done; \
         [ -d {dir} ] && {{ cat {dir}/time.txt; {part}; cat {dir}/critical-chain.txt; {part}; \
         head -n 8 {dir}/blame.txt; {part}; cat {dir}/jobs.txt; }}"
    )
}

impl BootTime {
    /// From what [`read_command`] printed; None when the guest wrote nothing.
    pub(crate) fn from_output(output: &str) -> Option<BootTime> {
        let mut parts = output.split(PART);
        let (time, chain, blame) = (parts.next()?, parts.next()?, parts.next()?);
        let mut boot = BootTime::parse(time, chain, blame);
        boot.unfinished = parts
            .next()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|unit| is_unit(unit))
            .map(str::to_owned)
            .collect();
        Some(boot)
    }

    /// From the three outputs of systemd-analyze: time, critical-chain, blame.
    pub(crate) fn parse(time: &str, chain: &str, blame: &str) -> BootTime {
        BootTime {
            summary: time
                .lines()
                .find(|l| l.starts_with("Startup finished"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
            critical_chain: chain.lines().filter_map(ChainLink::parse).collect(),
            slowest: blame.lines().filter_map(UnitTime::parse).collect(),
            unfinished: Vec::new(),
        }
    }

    /// The slowest `n` units, as `unit 1.2s` words.
    pub(crate) fn top(&self, n: usize) -> String {
        UnitTime::list(&self.slowest[..n.min(self.slowest.len())])
    }
}

impl ChainLink {
    /// `  └─nfs-server.service @1min 2.5s +350ms` (tree drawing, then
    /// the unit, `@when` and `+took`, either may be missing).
    fn parse(line: &str) -> Option<ChainLink> {
        // The tree is drawn in box characters, or in ASCII (`|-`, `` `- ``)
        // without UTF-8; a unit may start with `-` itself (`-.mount`).
        let line = line.trim_start_matches(|c: char| c.is_whitespace() || "└├│─|".contains(c));
        let line = line
            .strip_prefix("`-")
            .or_else(|| line.strip_prefix("|-"))
            .unwrap_or(line);
        let (unit, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        if !is_unit(unit) {
            return None;
        }
        let (at, took) = match rest.split_once('+') {
            Some((at, took)) => (at, Some(took)),
            None => (rest, None),
        };
        Some(ChainLink {
            unit: unit.to_owned(),
            at: at.trim().strip_prefix('@').and_then(seconds),
            took: took.and_then(seconds),
        })
    }
}

impl UnitTime {
    /// `unit 1.2s, unit 0.8s`.
    pub(crate) fn list(units: &[UnitTime]) -> String {
        units
            .iter()
            .map(|u| format!("{} {:.1}s", u.unit, u.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `1min 2.345s foo.service`.
    fn parse(line: &str) -> Option<UnitTime> {
        let line = line.trim();
        let (time, unit) = line.rsplit_once(char::is_whitespace)?;
        if !is_unit(unit) {
            return None;
        }
        Some(UnitTime {
            unit: unit.to_owned(),
            seconds: seconds(time)?,
        })
    }
}

fn is_unit(word: &str) -> bool {
    [
        ".service",
        ".target",
        ".mount",
        ".socket",
        ".device",
        ".swap",
        ".slice",
        ".path",
        ".timer",
        ".scope",
        ".automount",
    ]
    .iter()
    .any(|kind| word.ends_with(kind))
}

/// systemd's time spans: `1min 2.345s`, `350ms`, `1h 2min`, `12us`.
fn seconds(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for word in text.split_whitespace() {
        let split = word.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, unit) = word.split_at(split);
        let value: f64 = number.parse().ok()?;
        total += match unit {
            "h" => value * 3600.0,
            "min" => value * 60.0,
            "s" => value,
            "ms" => value / 1e3,
            "us" | "µs" => value / 1e6,
            _ => return None,
        };
        any = true;
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_files_come_back_apart_and_nothing_is_none() {
        let out = format!("Startup finished in 1s (kernel) + 2s (userspace) = 3s\n{PART}\nmulti-user.target @2s\n{PART}\n1.5s ssh.service\n{PART}\n107 systemd-networkd-wait-online.service start running\n");
        let boot = BootTime::from_output(&out).unwrap();
        assert_eq!(
            boot.summary,
            "Startup finished in 1s (kernel) + 2s (userspace) = 3s"
        );
        assert_eq!(boot.critical_chain.len(), 1);
        assert_eq!(boot.slowest[0].unit, "ssh.service");
        assert_eq!(boot.unfinished, ["systemd-networkd-wait-online.service"]);
        assert_eq!(
            BootTime::from_output("cat: /run/krgiso/boot/time.txt: No such file"),
            None
        );
        assert!(!read_command("/d").contains(PART), "typed split");
    }

    #[test]
    fn time_spans_in_every_unit_systemd_prints() {
        assert_eq!(seconds("2.345s"), Some(2.345));
        assert_eq!(seconds("1min 2.5s"), Some(62.5));
        assert_eq!(seconds("350ms"), Some(0.35));
        assert_eq!(seconds("1h 2min"), Some(3720.0));
        assert_eq!(seconds("soon"), None);
        assert_eq!(seconds(""), None);
    }

    #[test]
    fn a_critical_chain_keeps_each_unit_with_its_times() {
        let text =
            "The time when unit became active or started is printed after the \"@\" character.\n\
                    The time the unit took to start is printed after the \"+\" character.\n\n\
                    krgiso-node1.service +12.104s\n\
                    └─nfs-server.service @1min 4.221s +1.503s\n  \
                      └─network.target @20.5s\n    \
                        └─systemd-udev-settle.service @3.1s +17.2s\n      \
                          └─-.mount @1.9s\n        \
                          `-system.slice @1.8s\n";
        let chain: Vec<ChainLink> = text.lines().filter_map(ChainLink::parse).collect();
        assert_eq!(
            chain,
            [
                ChainLink {
                    unit: "krgiso-node1.service".into(),
                    at: None,
                    took: Some(12.104)
                },
                ChainLink {
                    unit: "nfs-server.service".into(),
                    at: Some(64.221),
                    took: Some(1.503)
                },
                ChainLink {
                    unit: "network.target".into(),
                    at: Some(20.5),
                    took: None
                },
                ChainLink {
                    unit: "systemd-udev-settle.service".into(),
                    at: Some(3.1),
                    took: Some(17.2)
                },
                ChainLink {
                    unit: "-.mount".into(),
                    at: Some(1.9),
                    took: None
                },
                ChainLink {
                    unit: "system.slice".into(),
                    at: Some(1.8),
                    took: None
                },
            ]
        );
    }

    #[test]
    fn blame_lines_become_units_and_the_summary_is_kept() {
        let boot = BootTime::parse(
            "Startup finished in 3.2s (kernel) + 41.0s (userspace) = 44.2s\nmulti-user.target reached after 40.9s in userspace.\n",
            "",
            "17.204s systemd-udev-settle.service\n1min 2.003s krgiso-node1.service\n  350ms ssh.service\nnot a unit line\n",
        );
        assert_eq!(
            boot.summary,
            "Startup finished in 3.2s (kernel) + 41.0s (userspace) = 44.2s"
        );
        assert_eq!(boot.slowest.len(), 3);
        assert_eq!(boot.slowest[1].unit, "krgiso-node1.service");
        assert!((boot.slowest[1].seconds - 62.003).abs() < 1e-9);
        assert_eq!(
            boot.top(2),
            "systemd-udev-settle.service 17.2s, krgiso-node1.service 62.0s"
        );
    }
}
