//! Kernel `.config` text: merging a fragment over it, and checking that
//! what the fragment asked for survived `make oldconfig` (a symbol whose
//! dependencies are unmet is silently dropped by the kernel's Kconfig).

use std::collections::BTreeMap;

/// What a config line says about one symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Setting {
    /// `CONFIG_X=value` (`y`, `m`, a number, a quoted string).
    Value(String),
    /// `# CONFIG_X is not set`
    NotSet,
}

/// Reads `CONFIG_X=...` and `# CONFIG_X is not set` lines; later lines win.
/// Other lines (comments, blanks) are ignored. Keys keep the `CONFIG_` prefix.
pub(crate) fn parse(text: &str) -> BTreeMap<String, Setting> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some((symbol, setting)) = parse_line(line) {
            out.insert(symbol.to_owned(), setting);
        }
    }
    out
}

fn parse_line(line: &str) -> Option<(&str, Setting)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        let symbol = rest.strip_suffix(" is not set")?;
        return is_symbol(symbol).then_some((symbol, Setting::NotSet));
    }
    let (symbol, value) = line.split_once('=')?;
    is_symbol(symbol).then(|| (symbol, Setting::Value(value.to_owned())))
}

fn is_symbol(s: &str) -> bool {
    s.starts_with("CONFIG_")
        && s.len() > 7
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn render(symbol: &str, setting: &Setting) -> String {
    match setting {
        Setting::Value(v) => format!("{symbol}={v}"),
        Setting::NotSet => format!("# {symbol} is not set"),
    }
}

/// `config` with every symbol the fragment sets replaced in place, and the
/// ones it did not have appended, in the fragment's order.
pub(crate) fn merge(config: &str, fragment: &str) -> String {
    let wanted = parse(fragment);
    let mut seen = Vec::new();
    let mut out = String::with_capacity(config.len() + fragment.len());
    for line in config.lines() {
        match parse_line(line) {
            Some((symbol, _)) if wanted.contains_key(symbol) => {
                if !seen.iter().any(|s| s == symbol) {
                    out.push_str(&render(symbol, &wanted[symbol]));
                    out.push('\n');
                    seen.push(symbol.to_owned());
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let mut appended = false;
    for line in fragment.lines() {
        let Some((symbol, _)) = parse_line(line) else {
            continue;
        };
        if seen.iter().any(|s| s == symbol) {
            continue;
        }
        if !appended {
            out.push_str("\n# krgiso: kernel-configs fragment\n");
            appended = true;
        }
        out.push_str(&render(symbol, &wanted[symbol]));
        out.push('\n');
        seen.push(symbol.to_owned());
    }
    out
}

/// Symbols the fragment sets to `y` (its last word on each) that are not
/// `=y` in the resolved config: dropped for unmet dependencies, or demoted.
pub(crate) fn dropped(fragment: &str, resolved: &str) -> Vec<String> {
    let wanted = parse(fragment);
    let got = parse(resolved);
    wanted
        .iter()
        .filter(|(_, s)| **s == Setting::Value("y".into()))
        .filter(|(symbol, _)| got.get(*symbol) != Some(&Setting::Value("y".into())))
        .map(|(symbol, _)| {
            let now = match got.get(symbol) {
                Some(Setting::Value(v)) => format!("={v}"),
                Some(Setting::NotSet) => " is not set".to_owned(),
                None => " is absent".to_owned(),
            };
            format!("{symbol}{now}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a 2.6.20 i386 defconfig (an excerpt).
    const DEFCONFIG: &str = "\
#
# Automatically generated make config: don't edit
# Linux kernel version: 2.6.20
#
CONFIG_X86_32=y
CONFIG_EXPERIMENTAL=y
CONFIG_MODULES=y
# CONFIG_PREEMPT_NONE is not set
CONFIG_PREEMPT_VOLUNTARY=y
# CONFIG_PREEMPT is not set
CONFIG_KEYS=y
CONFIG_NFS_FS=m
# CONFIG_ROOT_NFS is not set
CONFIG_LOCALVERSION=\"\"
";

    #[test]
    fn later_lines_win_and_not_set_is_honoured() {
        let p = parse(
            "CONFIG_A=y\n# CONFIG_A is not set\nCONFIG_B=m\nCONFIG_B=y\n# comment\nnot a line\n",
        );
        assert_eq!(p["CONFIG_A"], Setting::NotSet);
        assert_eq!(p["CONFIG_B"], Setting::Value("y".into()));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn merge_replaces_in_place_and_appends_the_rest() {
        let fragment = "# group\nCONFIG_PREEMPT_NONE=y\n# CONFIG_PREEMPT_VOLUNTARY is not set\n# CONFIG_KEYS is not set\nCONFIG_NFS_FS=y\nCONFIG_ROOT_NFS=y\nCONFIG_KERRIGHED=y\nCONFIG_NFS_FS=y\n";
        let merged = merge(DEFCONFIG, fragment);
        let expected = "\
#
# Automatically generated make config: don't edit
# Linux kernel version: 2.6.20
#
CONFIG_X86_32=y
CONFIG_EXPERIMENTAL=y
CONFIG_MODULES=y
CONFIG_PREEMPT_NONE=y
# CONFIG_PREEMPT_VOLUNTARY is not set
# CONFIG_PREEMPT is not set
# CONFIG_KEYS is not set
CONFIG_NFS_FS=y
CONFIG_ROOT_NFS=y
CONFIG_LOCALVERSION=\"\"

# krgiso: kernel-configs fragment
CONFIG_KERRIGHED=y
";
        assert_eq!(merged, expected);
        // Merging again changes nothing.
        assert_eq!(merge(&merged, fragment), merged);
    }

    #[test]
    fn a_symbol_dropped_by_resolution_is_named() {
        let fragment = "CONFIG_KERRIGHED=y\nCONFIG_NFS_FS=y\nCONFIG_ROOT_NFS=y\nCONFIG_E1000=y\n# CONFIG_KEYS is not set\n";
        // What oldconfig does when PREEMPT_NONE was forgotten: KERRIGHED vanishes;
        // and a driver left as a module.
        let resolved =
            "CONFIG_NFS_FS=y\nCONFIG_ROOT_NFS=y\nCONFIG_E1000=m\n# CONFIG_KEYS is not set\n";
        assert_eq!(
            dropped(fragment, resolved),
            ["CONFIG_E1000=m", "CONFIG_KERRIGHED is absent"]
        );
        let resolved_ok =
            "CONFIG_KERRIGHED=y\nCONFIG_NFS_FS=y\nCONFIG_ROOT_NFS=y\nCONFIG_E1000=y\n";
        assert!(dropped(fragment, resolved_ok).is_empty());
    }

    #[test]
    fn the_shipped_fragment_asks_for_what_a_diskless_kerrighed_node_needs() {
        let text =
            std::fs::read_to_string(crate::project_root().join("kernel-configs/krg-2.6.20.config"))
                .unwrap();
        let f = parse(&text);
        let y = Setting::Value("y".into());
        for symbol in [
            "KERRIGHED",
            "KRG_AUTONODEID",
            "PREEMPT_NONE",
            "TIPC",
            "CONFIGFS_FS",
            "NFS_FS",
            "NFS_V3",
            "ROOT_NFS",
            "IP_PNP",
            "IP_PNP_DHCP",
            "MODULES",
            "KMOD",
            "E1000",
            "E100",
            "8139TOO",
            "TIGON3",
            "PCNET32",
            "NE2K_PCI",
            "FORCEDETH",
            "R8169",
            "VIA_RHINE",
            "SKY2",
        ] {
            assert_eq!(f.get(&format!("CONFIG_{symbol}")), Some(&y), "{symbol}");
        }
        for symbol in ["PREEMPT_VOLUNTARY", "PREEMPT", "KEYS", "IPV6"] {
            assert_eq!(
                f.get(&format!("CONFIG_{symbol}")),
                Some(&Setting::NotSet),
                "{symbol}"
            );
        }
        assert!(
            !f.values().any(|s| *s == Setting::Value("m".into())),
            "NICs and NFS are built in, never modules"
        );
    }
}
