//! The profile: a TOML file under `profiles/` (or any path) that says what
//! image to build. Parsed into typed structs; every error names the file,
//! the key and the line.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A parsed, validated profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The live system on the USB stick (node1).
    pub node1: RootSpec,
    /// The root the PXE nodes mount over NFS.
    pub nodes: RootSpec,
    /// Where the kernel is compiled with `kernel.toolchain = "current"`: a
    /// root of its own (current Debian, the nodes' architecture), never
    /// part of the image.
    #[serde(default)]
    pub buildroot: Option<RootSpec>,
    pub kernel: KernelSpec,
    #[serde(default)]
    pub sources: Vec<Source>,
    pub network: Network,
    pub cluster: Cluster,
    pub iso: IsoSpec,
}

/// One debootstrapped root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSpec {
    pub suite: String,
    pub arch: String,
    pub mirror: String,
    /// debootstrap `--variant`; absent means debootstrap's default.
    #[serde(default)]
    pub variant: Option<Variant>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Keyring that verifies the suite's Release file.
    #[serde(default)]
    pub keyring: Option<PathBuf>,
    /// Accept an archive whose signature cannot be checked. Never implied.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// How `packages` get in: apt in the chroot after debootstrap, or
    /// debootstrap's own `--include` (verified against the Release file
    /// even where the suite's own apt would call its expired key invalid).
    #[serde(default)]
    pub install: InstallMethod,
    /// What the root's programs are: Debian's (debootstrap, `packages`
    /// installed from `mirror`), or, for the nodes of a 2.6.20 kernel that
    /// current glibc refuses, static programs built against musl in the
    /// build root from the Debian *source* packages `packages`.
    #[serde(default, skip_serializing_if = "Userland::is_debian")]
    pub userland: Userland,
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Userland {
    #[default]
    Debian,
    Static,
}

impl Userland {
    fn is_debian(&self) -> bool {
        *self == Userland::Debian
    }
}

/// The source packages a static userland knows how to build.
pub const STATIC_PACKAGES: &[&str] = &["busybox", "dropbear"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallMethod {
    #[default]
    Apt,
    Include,
}

fn default_components() -> Vec<String> {
    vec!["main".to_owned()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Minbase,
    Buildd,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Minbase => "minbase",
            Variant::Buildd => "buildd",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    pub kind: KernelKind,
    /// Config fragment merged over `make defconfig` (kind = "kerrighed").
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// The compiler inside the root the kernel is built in, e.g. `gcc-4.1`
    /// (kind = "kerrighed").
    #[serde(default)]
    pub cc: Option<String>,
    /// Which toolchain builds the kerrighed kernel: the nodes root's own
    /// (`era`), or a current Debian build root's with `patches` (`current`).
    #[serde(default)]
    pub toolchain: Toolchain,
    /// A directory of patch files (`*.patch`, applied in name order with
    /// `patch -p1` at the top of the kerrighed tree once it has made its
    /// patched kernel): what a current compiler needs of a 2007 tree.
    #[serde(default)]
    pub patches: Option<PathBuf>,
    /// Extra arguments to kerrighed's `./configure`.
    #[serde(default)]
    pub configure_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Toolchain {
    /// The nodes root's own compiler, make and binutils (lenny's gcc-4.1).
    #[default]
    Era,
    /// A current Debian root of its own (`[buildroot]`), plus `patches`.
    Current,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// linux-2.6.20 + kerrighed-2.4.1, built in the nodes root.
    Kerrighed,
    /// The nodes root's own Debian kernel with an NFS-root initramfs.
    Stock,
}

/// A source tarball the kernel stage needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub name: String,
    pub file: String,
    /// Absent: the pin lives in `sources.lock` beside the profile.
    #[serde(default)]
    pub sha256: Option<String>,
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// An interface name, or `auto`: the wired interface that is not the uplink.
    pub cluster_iface: String,
    /// node1's address on the cluster link.
    pub address: Ipv4Cidr,
    pub dhcp_range: DhcpRange,
    /// NAT the cluster link out through the uplink.
    #[serde(default)]
    pub gateway: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Kerrighed session id, 1..=254.
    pub session: u8,
    /// Nodes that must be up before the cluster starts by itself.
    pub nbmin: u16,
    pub user: String,
    /// crypt(3) hash (`mkpasswd -m sha-512`); never a clear-text password.
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsoSpec {
    pub volume: String,
    #[serde(default = "default_compression")]
    pub compression: Compression,
    pub output: String,
    /// Keep man pages, info, changelogs, READMEs and translations in the
    /// images (default: leave them out, the cluster does not read them).
    #[serde(default)]
    pub docs: bool,
}

fn default_compression() -> Compression {
    Compression::Zstd
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Xz,
}

/// An IPv4 address with its prefix length, written `10.77.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn netmask(self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !u32::from(self.netmask()))
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask()) == u32::from(self.network())
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not ADDRESS/PREFIX, e.g. 10.77.0.1/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix `/{prefix}` must be a number from 8 to 30"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The addresses handed to nodes, written `10.77.0.100-10.77.0.199`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpRange {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl DhcpRange {
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }
}

impl FromStr for DhcpRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not FIRST-LAST, e.g. 10.77.0.100-10.77.0.199"))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("`{}` is not an IPv4 address", x.trim()))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if u32::from(start) > u32::from(end) {
            return Err(format!("the range starts after it ends ({start} > {end})"));
        }
        Ok(DhcpRange { start, end })
    }
}

impl fmt::Display for DhcpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Serde through `FromStr`/`Display`, so a bad value's error carries its span.
macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(Ipv4Cidr);
serde_via_str!(DhcpRange);

/// A profile that failed to load: the file, the key, the line, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct ProfileError {
    pub file: PathBuf,
    /// Dotted key path (`cluster.session`), empty when the error is not at a key.
    pub key: String,
    /// 1-based; 0 when unknown.
    pub line: usize,
    pub message: String,
}

impl ProfileError {
    fn render(&self) -> String {
        let mut s = format!("profile {}", self.file.display());
        if self.line > 0 {
            s.push_str(&format!(", line {}", self.line));
        }
        if !self.key.is_empty() {
            s.push_str(&format!(", key `{}`", self.key));
        }
        s.push_str(": ");
        s.push_str(&self.message);
        s
    }
}

/// Where a profile name or path points: `kerrighed` → `<project>/profiles/kerrighed.toml`.
pub fn resolve(name_or_path: &str, project: &Path) -> anyhow::Result<PathBuf> {
    let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".toml");
    let path = if looks_like_path {
        PathBuf::from(name_or_path)
    } else {
        project
            .join("profiles")
            .join(format!("{name_or_path}.toml"))
    };
    if path.is_file() {
        return Ok(path);
    }
    let known = known_profiles(project).join(", ");
    anyhow::bail!(
        "profile `{name_or_path}` not found (looked for {}); profiles shipped: {known}",
        path.display()
    )
}

/// Names of the profiles under `<project>/profiles/`.
pub fn known_profiles(project: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(project.join("profiles"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    names
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError {
            file: path.to_owned(),
            key: String::new(),
            line: 0,
            message: format!("cannot read it: {e}"),
        })?;
        Profile::parse(&text, path)
    }

    /// Parse and validate profile text; `file` is used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Profile, ProfileError> {
        // Only an error needs the spans: the good path parses the text once.
        let error_at = |span: Option<Range<usize>>, message: String| {
            let (key, line) = match span {
                Some(span) => (
                    SpanIndex::new(text).key_at(&span),
                    line_of(text, span.start),
                ),
                None => (String::new(), 0),
            };
            ProfileError {
                file: file.to_owned(),
                key,
                line,
                message,
            }
        };
        let profile: Profile = toml::from_str(text)
            .map_err(|e| error_at(e.span(), plain_words(e.message().trim())))?;
        if let Some(problem) = profile.problems().into_iter().next() {
            let span = SpanIndex::new(text).span_of(&problem.key);
            let mut err = error_at(span, problem.message);
            err.key = problem.key;
            return Err(err);
        }
        Ok(profile)
    }

    /// Things to say on every run that uses this profile.
    pub fn warnings(&self) -> Vec<String> {
        self.roots()
            .iter()
            .filter(|(_, r)| r.allow_unsigned)
            .map(|(section, r)| {
                format!(
                    "[{section}] allow_unsigned = true: {} {} from {} is installed WITHOUT checking its signature",
                    r.suite, r.arch, r.mirror
                )
            })
            .collect()
    }

    /// Every root the profile builds, with its section name: node1, nodes,
    /// and the build root when there is one.
    /// In the order they are built: a static nodes root is built in the
    /// build root, so after it.
    pub fn roots(&self) -> Vec<(&'static str, &RootSpec)> {
        let mut roots = vec![("node1", &self.node1)];
        if let Some(build) = &self.buildroot {
            roots.push(("buildroot", build));
        }
        roots.push(("nodes", &self.nodes));
        roots
    }

    /// Looks up a source by name.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Checks that serde cannot express: ranges, formats, cross-field rules.
    fn problems(&self) -> Vec<Problem> {
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

struct Problem {
    key: String,
    message: String,
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
                        "{ip} is not a host address of node1's subnet {}/{}",
                        net.network(),
                        net.prefix
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

/// serde's messages name Rust types; say what a profile author would.
fn plain_words(message: &str) -> String {
    let mut m = message.to_owned();
    for (rust, plain) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected a sequence", "expected a list [\"...\", ...]"),
    ] {
        m = m.replace(rust, plain);
    }
    m
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Every key of a TOML document with its dotted path and where it stands.
struct SpanIndex {
    entries: Vec<SpanEntry>,
}

struct SpanEntry {
    path: String,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

impl SpanIndex {
    fn new(text: &str) -> SpanIndex {
        let mut entries = Vec::new();
        if let Ok(doc) = toml_edit::Document::parse(text) {
            walk_table(doc.as_table(), "", &mut entries);
        }
        SpanIndex { entries }
    }

    /// The innermost key whose key or value contains `span`.
    fn key_at(&self, span: &Range<usize>) -> String {
        let within = |r: &Option<Range<usize>>| {
            r.as_ref()
                .is_some_and(|r| r.start <= span.start && span.start < r.end.max(r.start + 1))
        };
        self.entries
            .iter()
            .filter(|e| within(&e.key) || within(&e.value))
            .max_by_key(|e| e.path.len())
            .map(|e| e.path.clone())
            .unwrap_or_default()
    }

    /// Where a dotted key (or its nearest existing parent) stands.
    fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut path = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == path) {
                return e.key.clone().or_else(|| e.value.clone());
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Standard and inline tables alike.
fn walk_table(table: &dyn toml_edit::TableLike, prefix: &str, out: &mut Vec<SpanEntry>) {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = join(prefix, name);
        out.push(SpanEntry {
            path: path.clone(),
            key: key.span(),
            value: item.span(),
        });
        walk_item(item, &path, out);
    }
}

fn walk_item(item: &toml_edit::Item, path: &str, out: &mut Vec<SpanEntry>) {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, out),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push(SpanEntry {
                    path: p.clone(),
                    key: None,
                    value: t.span(),
                });
                walk_table(t, &p, out);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => walk_table(t, path, out),
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push(SpanEntry {
                    path: p.clone(),
                    key: None,
                    value: v.span(),
                });
                walk_item(&toml_edit::Item::Value(v.clone()), &p, out);
            }
        }
        toml_edit::Item::Value(_) | toml_edit::Item::None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> Profile {
        let path = crate::project_root().join(format!("profiles/{name}.toml"));
        Profile::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn smoke_text() -> String {
        std::fs::read_to_string(crate::project_root().join("profiles/smoke.toml")).unwrap()
    }

    /// Parses the smoke profile with one edit; returns the error.
    fn error_after(from: &str, to: &str) -> ProfileError {
        let text = smoke_text();
        assert!(text.contains(from), "{from}");
        let edited = text.replacen(from, to, 1);
        Profile::parse(&edited, Path::new("profiles/edited.toml")).expect_err("should be refused")
    }

    fn line_of_text(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn the_kerrighed_profile_carries_the_mission() {
        let p = shipped("kerrighed");
        assert_eq!(p.kernel.kind, KernelKind::Kerrighed);
        assert_eq!(
            (p.nodes.suite.as_str(), p.nodes.arch.as_str()),
            ("lenny", "i386")
        );
        assert_eq!(p.nodes.mirror, "http://archive.debian.org/debian");
        let linux = p.source("linux").unwrap();
        assert_eq!(linux.file, "linux-2.6.20.tar.bz2");
        assert_eq!(
            linux.sha256.as_deref(),
            Some("2c14ada1ac7d272e03b430d3a530d60fc9ec69cc8252382aa049afba7d2b8558")
        );
        for host in [
            "cdn.kernel.org",
            "mirrors.edge.kernel.org",
            "www.kernel.org",
        ] {
            assert!(
                linux
                    .urls
                    .iter()
                    .any(|u| u.contains(host) && u.contains("/pub/linux/kernel/v2.6/")),
                "{host}"
            );
        }
        let krg = p.source("kerrighed").unwrap();
        assert_eq!(krg.file, "kerrighed-2.4.1.tar.gz");
        assert_eq!(krg.sha256, None, "pinned through sources.lock");
        assert!(krg.urls[0].starts_with("http://gforge.inria.fr/"));
        assert!(krg
            .urls
            .iter()
            .any(|u| u.starts_with("https://web.archive.org/web/") && u.ends_with(&krg.urls[0])));
    }

    #[test]
    fn kerrighed_current_builds_2_4_4_with_a_current_toolchain_from_reachable_pins() {
        let (cur, krg) = (shipped("kerrighed-current"), shipped("kerrighed"));
        assert_eq!(krg.kernel.toolchain, Toolchain::Era);
        assert!(krg.buildroot.is_none());
        assert_eq!(cur.kernel.kind, KernelKind::Kerrighed);
        assert_eq!(cur.kernel.toolchain, Toolchain::Current);
        assert_eq!(
            cur.kernel.patches.as_deref(),
            Some(Path::new("kernel-patches"))
        );
        let build = cur.buildroot.as_ref().expect("a [buildroot]");
        assert_eq!(
            (build.suite.as_str(), build.arch.as_str()),
            ("bookworm", "i386")
        );
        for needed in ["build-essential", "patch", "bzip2", "ccache"] {
            assert!(build.packages.iter().any(|p| p == needed), "{needed}");
        }
        assert_eq!(cur.nodes.arch, "i386");
        assert_eq!(cur.nodes.userland, Userland::Static);
        assert_eq!(cur.nodes.packages, ["busybox", "dropbear"]);
        assert!(build.packages.iter().any(|p| p == "musl-tools"));
        assert_eq!(krg.nodes.userland, Userland::Debian);
        // The same kernel.org pin; 2.4.4 pinned in the profile itself.
        assert_eq!(
            cur.source("linux").unwrap().sha256,
            krg.source("linux").unwrap().sha256
        );
        let k = cur.source("kerrighed").unwrap();
        assert_eq!(k.file, "kerrighed-2.4.4.tar.gz");
        assert_eq!(
            k.sha256.as_deref(),
            Some("26768f1641ca8ef6a0cf080b05a66e2e36a134a92041c02c99235eb30611c198")
        );
        assert!(k
            .urls
            .iter()
            .all(|u| u.contains("9d8105406c4b30e99a0c0297de47c0009b4adf97")));
        assert_eq!(cur.node1.packages, krg.node1.packages);
    }

    #[test]
    fn a_build_root_goes_with_the_current_toolchain_and_the_nodes_arch() {
        let current =
            std::fs::read_to_string(crate::project_root().join("profiles/kerrighed-current.toml"))
                .unwrap();
        let parse = |text: &str| Profile::parse(text, Path::new("profiles/edited.toml"));
        let at = current.find("[buildroot]").unwrap();
        let end = current[at..].find("[kernel]").unwrap() + at;
        let without = format!("{}{}", &current[..at], &current[end..]);
        let err = parse(&without).unwrap_err();
        assert_eq!(err.key, "kernel.toolchain");
        assert!(err.message.contains("add a [buildroot] section"), "{err}");

        let era = current.replacen("toolchain = \"current\"", "toolchain = \"era\"", 1);
        let err = parse(&era).unwrap_err();
        assert_eq!(err.key, "buildroot");
        assert_eq!(err.line, line_of_text(&era, "[buildroot]"));

        let amd64 = current.replacen(
            "[buildroot]\n# Where the kernel, kerrighed.ko and the tools are compiled; kept out of the image.\nsuite = \"bookworm\"\narch = \"i386\"",
            "[buildroot]\nsuite = \"bookworm\"\narch = \"amd64\"",
            1,
        );
        assert_ne!(amd64, current);
        let err = parse(&amd64).unwrap_err();
        assert_eq!(err.key, "buildroot.arch");
        assert!(err.message.contains("[nodes] arch (i386)"), "{err}");

        let err = error_after(
            "kind = \"stock\"",
            "kind = \"stock\"\npatches = \"kernel-patches\"",
        );
        assert_eq!(err.key, "kernel.patches");
    }

    #[test]
    fn a_static_userland_is_for_the_nodes_built_in_a_build_root_from_known_sources() {
        let current =
            std::fs::read_to_string(crate::project_root().join("profiles/kerrighed-current.toml"))
                .unwrap();
        let parse = |text: &str| Profile::parse(text, Path::new("profiles/edited.toml"));
        let unknown = current.replacen(
            "packages = [\"busybox\", \"dropbear\"]",
            "packages = [\"busybox\", \"openssh-server\"]",
            1,
        );
        let err = parse(&unknown).unwrap_err();
        assert_eq!(err.key, "nodes.packages[1]");
        assert!(err.message.contains("busybox and dropbear only"), "{err}");
        let no_busybox = current.replacen(
            "packages = [\"busybox\", \"dropbear\"]",
            "packages = [\"dropbear\"]",
            1,
        );
        assert!(parse(&no_busybox)
            .unwrap_err()
            .message
            .contains("needs busybox"));
        // node1 is the live system of today: never static.
        let node1 = current.replacen("[node1]\nsuite", "[node1]\nuserland = \"static\"\nsuite", 1);
        assert_eq!(parse(&node1).unwrap_err().key, "node1.userland");
        // The smoke profile has no build root to build one in.
        let err = error_after(
            "[nodes]\nsuite = \"bookworm\"",
            "[nodes]\nuserland = \"static\"\nsuite = \"bookworm\"",
        );
        assert_eq!(err.key, "nodes.userland");
        assert!(err.message.contains("built in the build root"), "{err}");
    }

    #[test]
    fn the_smoke_profile_is_the_same_image_with_a_stock_kernel() {
        let (smoke, krg) = (shipped("smoke"), shipped("kerrighed"));
        assert_eq!(smoke.kernel.kind, KernelKind::Stock);
        assert_eq!(smoke.nodes.suite, smoke.node1.suite);
        assert!(smoke.nodes.packages.iter().any(|p| p == "initramfs-tools"));
        assert_eq!(smoke.node1.packages, krg.node1.packages);
        assert_eq!(smoke.sources.len(), krg.sources.len());
        assert_eq!(smoke.network.address, krg.network.address);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = error_after("gateway = false", "gateway = false\ngatway = true");
        let text = smoke_text().replacen("gateway = false", "gateway = false\ngatway = true", 1);
        assert_eq!(err.key, "network.gatway");
        assert_eq!(err.line, line_of_text(&text, "gatway"));
        assert!(
            err.message.contains("unknown field `gatway`"),
            "{}",
            err.message
        );
        let shown = err.to_string();
        assert!(
            shown.starts_with("profile profiles/edited.toml, line "),
            "{shown}"
        );
        assert!(shown.contains("key `network.gatway`"), "{shown}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_line() {
        let err = error_after("session = 1", "session = \"one\"");
        assert_eq!(err.key, "cluster.session");
        assert_eq!(err.line, line_of_text(&smoke_text(), "session = 1"));
        assert!(err.message.contains("invalid type"), "{}", err.message);

        let err = error_after("\"nfs-common\",", "3,");
        assert!(err.key.starts_with("nodes.packages"), "{}", err.key);
        assert_eq!(err.line, line_of_text(&smoke_text(), "\"nfs-common\","));
    }

    #[test]
    fn a_missing_key_names_its_section() {
        let err = error_after("output = \"krgiso-smoke.iso\"", "");
        assert!(
            err.message.contains("missing field `output`"),
            "{}",
            err.message
        );
        assert!(err.key.is_empty() || err.key == "iso", "{}", err.key);
    }

    #[test]
    fn bad_values_are_named_with_their_line() {
        let cases = [
            (
                "address = \"10.77.0.1/24\"",
                "address = \"10.77.0.1/33\"",
                "network.address",
                "prefix",
            ),
            (
                "address = \"10.77.0.1/24\"",
                "address = \"10.77.0.300/24\"",
                "network.address",
                "not an IPv4 address",
            ),
            (
                "dhcp_range = \"10.77.0.100-10.77.0.199\"",
                "dhcp_range = \"10.77.0.100-10.78.0.9\"",
                "network.dhcp_range",
                "not a host address",
            ),
            (
                "dhcp_range = \"10.77.0.100-10.77.0.199\"",
                "dhcp_range = \"10.77.0.1-10.77.0.9\"",
                "network.dhcp_range",
                "node1's own address",
            ),
            (
                "session = 1",
                "session = 255",
                "cluster.session",
                "1 to 254",
            ),
            (
                "compression = \"zstd\"",
                "compression = \"gzip\"",
                "iso.compression",
                "unknown variant",
            ),
            (
                "volume = \"KRGISO_SMOKE\"",
                "volume = \"krg iso\"",
                "iso.volume",
                "A-Z",
            ),
            (
                "arch = \"amd64\"",
                "arch = \"x86_64\"",
                "node1.arch",
                "not a Debian architecture",
            ),
            (
                "user = \"krg\"",
                "user = \"root\"",
                "cluster.user",
                "not root",
            ),
            (
                "kind = \"stock\"",
                "kind = \"kerrighed\"",
                "kernel.config",
                "needs `config`",
            ),
        ];
        for (from, to, key, words) in cases {
            let err = error_after(from, to);
            assert_eq!(err.key, key, "{to}: {err}");
            assert!(err.message.contains(words), "{to}: {err}");
            let edited = smoke_text().replacen(from, to, 1);
            let expected_line = line_of_text(&edited, to.split('\n').next().unwrap());
            if key != "kernel.config" {
                assert_eq!(err.line, expected_line, "{to}: {err}");
            } else {
                // A missing key is reported at its section.
                assert_eq!(err.line, line_of_text(&edited, "[kernel]"), "{err}");
            }
        }
    }

    #[test]
    fn a_clear_text_password_is_refused() {
        let err = error_after(
            "user = \"krg\"",
            "user = \"krg\"\npassword_hash = \"hunter2\"",
        );
        assert_eq!(err.key, "cluster.password_hash");
        assert!(err.message.contains("never a clear-text password"));
    }

    #[test]
    fn names_resolve_under_profiles_and_paths_are_taken_as_given() {
        let root = crate::project_root();
        assert_eq!(
            resolve("smoke", &root).unwrap(),
            root.join("profiles/smoke.toml")
        );
        let path = root.join("profiles/kerrighed.toml");
        assert_eq!(resolve(path.to_str().unwrap(), &root).unwrap(), path);
        let err = resolve("nope", &root).unwrap_err().to_string();
        assert!(
            err.contains("profile `nope` not found")
                && err.contains("kerrighed, kerrighed-current, smoke"),
            "{err}"
        );
    }

    #[test]
    fn cidr_arithmetic() {
        let c: Ipv4Cidr = "10.77.0.1/24".parse().unwrap();
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.network(), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 77, 0, 255));
        assert!(c.contains(Ipv4Addr::new(10, 77, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 77, 1, 1)));
        let r: DhcpRange = "10.77.0.100-10.77.0.199".parse().unwrap();
        assert!(
            r.contains(Ipv4Addr::new(10, 77, 0, 150)) && !r.contains(Ipv4Addr::new(10, 77, 0, 1))
        );
        assert!("10.77.0.9-10.77.0.1".parse::<DhcpRange>().is_err());
    }
}
