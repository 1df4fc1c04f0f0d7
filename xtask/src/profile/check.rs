//! What serde cannot check in a profile: ranges, formats and the rules
//! between fields. Each problem names its dotted key; `Profile::parse`
//! finds its line.

use super::*;

impl Profile {
    /// Checks that serde cannot express: ranges, formats, cross-field rules.
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        for (section, root) in self.roots() {
            root.check(section, &mut p);
        }
        self.kernel.check(&mut p);
        self.check_buildroot(&mut p);
        self.check_userland(&mut p);
        if self.kernel.kind == KernelKind::Kerrighed {
            for needed in ["linux", "kerrighed"] {
                if self.source(needed).is_none() {
                    p.add(
                        "sources",
                        format!("kernel.kind = \"kerrighed\" needs a [[sources]] entry named `{needed}`"),
                    );
                }
            }
        }
        for (i, s) in self.sources.iter().enumerate() {
            s.check(i, &mut p);
            if self.sources[..i]
                .iter()
                .any(|o| o.name == s.name || o.file == s.file)
            {
                p.add(
                    format!("sources[{i}].name"),
                    format!("source `{}` ({}) is listed twice", s.name, s.file),
                );
            }
        }
        self.network.check(self.kernel.kind, &mut p);
        self.cluster.check(&mut p);
        self.iso.check(&mut p);
        p.0
    }
}

impl Profile {
    /// A static userland is for the nodes only, is built in the build root,
    /// and from sources krgiso has a recipe for (busybox at least: init
    /// and shell).
    fn check_userland(&self, p: &mut Problems) {
        for (section, root) in [("node1", &self.node1)]
            .into_iter()
            .chain(self.buildroot.as_ref().map(|b| ("buildroot", b)))
        {
            if root.userland == Userland::Static {
                p.add(
                    format!("{section}.userland"),
                    "only the nodes root can be a static userland",
                );
            }
        }
        let nodes = &self.nodes;
        if nodes.userland != Userland::Static {
            return;
        }
        if self.buildroot.is_none() {
            p.add(
                "nodes.userland",
                "userland = \"static\" is built in the build root: set kernel.toolchain = \"current\" and add a [buildroot]",
            );
        }
        for (i, pkg) in nodes.packages.iter().enumerate() {
            if !STATIC_PACKAGES.contains(&pkg.as_str()) {
                p.add(
                    format!("nodes.packages[{i}]"),
                    format!(
                        "`{pkg}`: a static userland is built from {} only",
                        STATIC_PACKAGES.join(" and ")
                    ),
                );
            }
        }
        if !nodes.packages.iter().any(|p| p == "busybox") {
            p.add(
                "nodes.packages",
                "a static userland needs busybox (init, shell, mount, networking tools)",
            );
        }
    }

    /// The build root goes with `toolchain = "current"`, and builds for the
    /// nodes' architecture.
    fn check_buildroot(&self, p: &mut Problems) {
        let current = self.kernel.kind == KernelKind::Kerrighed
            && self.kernel.toolchain == Toolchain::Current;
        match &self.buildroot {
            None if current => p.add(
                "kernel.toolchain",
                "toolchain = \"current\" builds in a root of its own: add a [buildroot] section (suite, arch, mirror, packages)",
            ),
            Some(_) if !current => p.add(
                "buildroot",
                "a [buildroot] is only used with kernel.kind = \"kerrighed\" and toolchain = \"current\": remove it, or set those",
            ),
            Some(build) if build.arch != self.nodes.arch => p.add(
                "buildroot.arch",
                format!(
                    "the kernel is built for the nodes: [buildroot] arch must be [nodes] arch ({})",
                    self.nodes.arch
                ),
            ),
            _ => {}
        }
    }
}

pub(super) struct Problem {
    pub(super) key: String,
    pub(super) message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

const DEBIAN_ARCHES: &[&str] = &[
    "amd64", "i386", "arm64", "armhf", "armel", "ppc64el", "s390x", "riscv64", "mips64el",
];

fn is_package_name(s: &str) -> bool {
    // Debian policy 5.6.1, plus an optional `=version` or `/suite` pin.
    let name = s.split(['=', '/']).next().unwrap_or("");
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn is_url(s: &str) -> bool {
    ["http://", "https://", "file://"]
        .iter()
        .any(|scheme| s.starts_with(scheme) && s.len() > scheme.len())
}

impl RootSpec {
    fn check(&self, section: &str, p: &mut Problems) {
        if self.suite.is_empty()
            || !self
                .suite
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            p.add(
                format!("{section}.suite"),
                format!(
                    "`{}` is not a suite name (e.g. bookworm, lenny)",
                    self.suite
                ),
            );
        }
        if !DEBIAN_ARCHES.contains(&self.arch.as_str()) {
            p.add(
                format!("{section}.arch"),
                format!(
                    "`{}` is not a Debian architecture; use one of {}",
                    self.arch,
                    DEBIAN_ARCHES.join(", ")
                ),
            );
        }
        if !is_url(&self.mirror) {
            p.add(
                format!("{section}.mirror"),
                format!(
                    "`{}` is not an http://, https:// or file:// URL",
                    self.mirror
                ),
            );
        }
        if self.keyring.is_some() && self.allow_unsigned {
            p.add(
                format!("{section}.allow_unsigned"),
                "set either `keyring` or `allow_unsigned = true`, not both",
            );
        }
        if self.bootstrap == Bootstrap::Mmdebstrap && self.userland == Userland::Debian {
            if self.allow_unsigned {
                p.add(
                    format!("{section}.allow_unsigned"),
                    "mmdebstrap checks every Release signature: for an unsigned suite set `bootstrap = \"debootstrap\"`",
                );
            }
            if self.install == InstallMethod::Include {
                p.add(
                    format!("{section}.install"),
                    "`install` is debootstrap's: mmdebstrap installs the packages in its own run; drop `install`, or set `bootstrap = \"debootstrap\"`",
                );
            }
        }
        if self.components.is_empty() {
            p.add(
                format!("{section}.components"),
                "list at least one component, e.g. [\"main\"]",
            );
        }
        for (i, pkg) in self.packages.iter().enumerate() {
            if !is_package_name(pkg) {
                p.add(
                    format!("{section}.packages[{i}]"),
                    format!("`{pkg}` is not a Debian package name"),
                );
            }
        }
    }
}

impl KernelSpec {
    fn check(&self, p: &mut Problems) {
        if self.kind == KernelKind::Kerrighed {
            if self.config.is_none() {
                p.add("kernel.config", "kernel.kind = \"kerrighed\" needs `config`, the kernel config fragment (e.g. \"kernel-configs/krg-2.6.20.config\")");
            }
            if self.cc.is_none() {
                p.add("kernel.cc", "kernel.kind = \"kerrighed\" needs `cc`, the compiler inside the root it is built in (e.g. \"gcc-4.1\")");
            }
        }
        if self.patches.is_some() && self.kind != KernelKind::Kerrighed {
            p.add(
                "kernel.patches",
                "patches apply to the kerrighed tree: only with kind = \"kerrighed\"",
            );
        }
        if let Some(cc) = &self.cc {
            if cc.is_empty() || cc.contains(char::is_whitespace) || cc.contains('/') {
                p.add(
                    "kernel.cc",
                    format!("`{cc}` is not a compiler name (e.g. gcc-4.1)"),
                );
            }
        }
    }
}

impl Source {
    fn check(&self, i: usize, p: &mut Problems) {
        if self.file.is_empty() || self.file.contains('/') || self.file.starts_with('.') {
            p.add(
                format!("sources[{i}].file"),
                format!("`{}` must be a plain file name", self.file),
            );
        }
        if let Some(sum) = &self.sha256 {
            if sum.len() != 64
                || !sum
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                p.add(
                    format!("sources[{i}].sha256"),
                    "must be 64 lowercase hex digits",
                );
            }
        }
        if self.urls.is_empty() {
            p.add(
                format!("sources[{i}].urls"),
                format!("source `{}` lists no URL", self.name),
            );
        }
        for (j, url) in self.urls.iter().enumerate() {
            if !is_url(url) {
                p.add(
                    format!("sources[{i}].urls[{j}]"),
                    format!("`{url}` is not an http://, https:// or file:// URL"),
                );
            }
        }
    }
}

impl Network {
    fn check(&self, kind: KernelKind, p: &mut Problems) {
        let iface = &self.cluster_iface;
        if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
            p.add(
                "network.cluster_iface",
                format!("`{iface}` is not an interface name (or \"auto\")"),
            );
        }
        let net = self.address;
        if net.addr == net.network() || net.addr == net.broadcast() {
            p.add(
                "network.address",
                format!(
                    "{} is the network or broadcast address of its subnet",
                    net.addr
                ),
            );
        }
        let r = self.dhcp_range;
        for ip in [r.start, r.end] {
            if !net.contains(ip) || ip == net.network() || ip == net.broadcast() {
                p.add(
                    "network.dhcp_range",
                    format!(
                        "{ip} is not a host address of node1's subnet {}",
                        net.subnet()
                    ),
                );
                return;
            }
        }
        if r.contains(net.addr) {
            p.add(
                "network.dhcp_range",
                format!("the range {r} contains node1's own address {}", net.addr),
            );
        }
        // KRG_AUTONODEID takes the node id from the last octet: one /24, no repeats.
        if kind == KernelKind::Kerrighed && r.start.octets()[..3] != r.end.octets()[..3] {
            p.add("network.dhcp_range", format!("with the kerrighed kernel, node ids come from the last octet: keep the range {r} inside one /24"));
        } else if kind == KernelKind::Kerrighed && !r.contains(net.addr) {
            // node1's octet in another /24 of a wider subnet: a node there
            // would have node1's id.
            let own = net.addr.octets()[3];
            if (r.start.octets()[3]..=r.end.octets()[3]).contains(&own) {
                p.add("network.dhcp_range", format!("with the kerrighed kernel, node ids come from the last octet: keep node1's octet {own} ({}) out of the range {r}", net.addr));
            }
        }
    }
}

impl Cluster {
    fn check(&self, p: &mut Problems) {
        if !(1..=254).contains(&self.session) {
            p.add(
                "cluster.session",
                format!("{} is not a Kerrighed session id (1 to 254)", self.session),
            );
        }
        if self.nbmin == 0 {
            p.add(
                "cluster.nbmin",
                "at least one node must be up to start the cluster",
            );
        }
        if !(1..=600).contains(&self.settle) {
            p.add(
                "cluster.settle",
                format!(
                    "{} s is not a settle time: 1 to 600 seconds with no new node before the cluster starts",
                    self.settle
                ),
            );
        }
        if !(4..=600).contains(&self.lost_after) {
            p.add(
                "cluster.lost_after",
                format!(
                    "{} s is not a time to call a member lost: 4 to 600 seconds unanswered (a member is pinged every second or two)",
                    self.lost_after
                ),
            );
        }
        let u = &self.user;
        let valid = !u.is_empty()
            && u.len() <= 32
            && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && u.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
        if !valid {
            p.add(
                "cluster.user",
                format!("`{u}` is not a valid user name (lowercase letters, digits, - and _)"),
            );
        } else if u == "root" {
            p.add("cluster.user", "choose an ordinary user name, not root");
        }
        if let Some(hash) = &self.password_hash {
            if !hash.starts_with('$') || hash.split('$').count() < 4 {
                p.add("cluster.password_hash", "must be a crypt(3) hash such as `mkpasswd -m sha-512` prints, never a clear-text password");
            }
        }
        for (i, key) in self.authorized_keys.iter().enumerate() {
            let mut words = key.split_whitespace();
            let ok = matches!(words.next(), Some(t) if t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-"))
                && words.next().is_some();
            if !ok {
                p.add(
                    format!("cluster.authorized_keys[{i}]"),
                    "is not an OpenSSH public key line (`ssh-ed25519 AAAA... comment`)",
                );
            }
        }
    }
}

impl IsoSpec {
    fn check(&self, p: &mut Problems) {
        let v = &self.volume;
        if v.is_empty()
            || v.len() > 32
            || !v
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            p.add(
                "iso.volume",
                format!(
                    "`{v}` must be 1 to 32 characters of A-Z, 0-9 and _ (an ISO 9660 volume id)"
                ),
            );
        }
        let o = &self.output;
        if o.contains('/') || !o.ends_with(".iso") || o.starts_with('.') {
            p.add(
                "iso.output",
                format!("`{o}` must be a plain file name ending in .iso"),
            );
        }
    }
}
