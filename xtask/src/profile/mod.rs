//! The profile: a TOML file under `profiles/` (or any path) that says what
//! image to build. Parsed into typed structs; every error names the file,
//! the key and the line.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod check;
mod include;
mod spans;
#[cfg(test)]
mod tests;

use spans::{line_of, plain_words, SpanIndex};

/// A parsed, validated profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Files this profile is built on (include.rs); merged in when it is
    /// read, so never written out again.
    #[serde(default, skip_serializing)]
    pub include: Vec<String>,
    /// Why this profile has never been built end to end, when it has not:
    /// said at the start of every command that uses it.
    #[serde(default)]
    pub(crate) untested: Option<String>,
    /// The live system on the USB stick (node1).
    pub(crate) node1: RootSpec,
    /// The root the PXE nodes mount over NFS.
    pub(crate) nodes: RootSpec,
    /// Where the kernel is compiled with `kernel.toolchain = "current"`: a
    /// root of its own (current Debian, the nodes' architecture), never
    /// part of the image.
    #[serde(default)]
    pub(crate) buildroot: Option<RootSpec>,
    pub(crate) kernel: KernelSpec,
    #[serde(default)]
    pub(crate) sources: Vec<Source>,
    pub(crate) network: Network,
    pub(crate) cluster: Cluster,
    pub(crate) iso: IsoSpec,
    /// node1's status page.
    #[serde(default)]
    pub(crate) status: StatusSpec,
}

/// node1's status page (`[status]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusSpec {
    /// Where it answers: the cluster link only (default), or every link.
    #[serde(default)]
    pub(crate) listen: Listen,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Listen {
    #[default]
    Cluster,
    All,
}

impl Listen {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Listen::Cluster => "cluster",
            Listen::All => "all",
        }
    }
}

/// One debootstrapped root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RootSpec {
    pub(crate) suite: String,
    pub(crate) arch: String,
    pub(crate) mirror: String,
    /// debootstrap `--variant`; absent means debootstrap's default.
    #[serde(default)]
    pub(crate) variant: Option<Variant>,
    #[serde(default = "default_components")]
    pub(crate) components: Vec<String>,
    /// Keyring that verifies the suite's Release file.
    #[serde(default)]
    pub(crate) keyring: Option<PathBuf>,
    /// Accept an archive whose signature cannot be checked. Never implied.
    #[serde(default)]
    pub(crate) allow_unsigned: bool,
    /// What makes the root: mmdebstrap (the root and its `packages` in one
    /// run, apt resolving them), or debootstrap, then `install`.
    #[serde(default)]
    pub(crate) bootstrap: Bootstrap,
    /// With debootstrap, how `packages` get in: apt in the chroot after
    /// debootstrap, or debootstrap's own `--include` (verified against the
    /// Release file even where the suite's own apt would call its expired
    /// key invalid).
    #[serde(default)]
    pub(crate) install: InstallMethod,
    /// What the root's programs are: Debian's (debootstrap, `packages`
    /// installed from `mirror`), or, for the nodes of a 2.6.20 kernel that
    /// current glibc refuses, static programs built against musl in the
    /// build root from the Debian *source* packages `packages`.
    #[serde(default, skip_serializing_if = "Userland::is_debian")]
    pub(crate) userland: Userland,
    pub(crate) packages: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Userland {
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
pub(crate) const STATIC_PACKAGES: &[&str] = &["busybox", "dropbear"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Bootstrap {
    /// mmdebstrap: 1.5x debootstrap's speed for a bookworm minbase, and
    /// the packages in the same run.
    #[default]
    Mmdebstrap,
    /// debootstrap: for suites the host's apt cannot read any more (lenny).
    Debootstrap,
}

impl Bootstrap {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Bootstrap::Mmdebstrap => "mmdebstrap",
            Bootstrap::Debootstrap => "debootstrap",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum InstallMethod {
    #[default]
    Apt,
    Include,
}

fn default_components() -> Vec<String> {
    vec!["main".to_owned()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Variant {
    Minbase,
    Buildd,
}

impl Variant {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Variant::Minbase => "minbase",
            Variant::Buildd => "buildd",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KernelSpec {
    pub(crate) kind: KernelKind,
    /// Config fragment merged over `make defconfig` (kind = "kerrighed").
    #[serde(default)]
    pub(crate) config: Option<PathBuf>,
    /// The compiler inside the root the kernel is built in, e.g. `gcc-4.1`
    /// (kind = "kerrighed").
    #[serde(default)]
    pub(crate) cc: Option<String>,
    /// Which toolchain builds the kerrighed kernel: the nodes root's own
    /// (`era`), or a current Debian build root's with `patches` (`current`).
    #[serde(default)]
    pub(crate) toolchain: Toolchain,
    /// A directory of patch files (`*.patch`, applied in name order with
    /// `patch -p1` at the top of the kerrighed tree once it has made its
    /// patched kernel): what a current compiler needs of a 2007 tree.
    #[serde(default)]
    pub(crate) patches: Option<PathBuf>,
    /// Extra arguments to kerrighed's `./configure`.
    #[serde(default)]
    pub(crate) configure_args: Vec<String>,
}

impl KernelSpec {
    /// The build root's C compiler (`cc` with the current toolchain):
    /// musl-gcc runs it for the static userland too (`REALGCC`).
    pub(crate) fn build_root_cc(&self) -> Option<&str> {
        match self.toolchain {
            Toolchain::Current => self.cc.as_deref(),
            Toolchain::Era => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Toolchain {
    /// The nodes root's own compiler, make and binutils (lenny's gcc-4.1).
    #[default]
    Era,
    /// A current Debian root of its own (`[buildroot]`), plus `patches`.
    Current,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KernelKind {
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
pub(crate) struct Network {
    /// An interface name, or `auto`: the wired interface that is not the uplink.
    pub(crate) cluster_iface: String,
    /// node1's address on the cluster link.
    pub(crate) address: Ipv4Cidr,
    pub(crate) dhcp_range: DhcpRange,
    /// NAT the cluster link out through the uplink.
    #[serde(default)]
    pub(crate) gateway: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cluster {
    /// Kerrighed session id, 1..=254.
    pub(crate) session: u8,
    /// Nodes that must be up before the cluster starts by itself.
    pub(crate) nbmin: u16,
    /// Seconds with no new node before the cluster starts (static
    /// userland): every node that boots with the others joins, since a
    /// Kerrighed 2.4 cluster takes no node once it runs.
    #[serde(default = "default_settle")]
    pub(crate) settle: u16,
    /// Seconds a member may go unanswered (its address pinged by each
    /// other member, static userland) before it counts as lost: the
    /// members then reboot, and the cluster forms again without it.
    #[serde(default = "default_lost_after")]
    pub(crate) lost_after: u16,
    pub(crate) user: String,
    /// crypt(3) hash (`mkpasswd -m sha-512`); never a clear-text password.
    #[serde(default)]
    pub(crate) password_hash: Option<String>,
    #[serde(default)]
    pub(crate) authorized_keys: Vec<String>,
    /// Kerrighed's load balancing, set up once the cluster is up.
    #[serde(default)]
    pub(crate) scheduler: Scheduler,
}

fn default_settle() -> u16 {
    15
}

fn default_lost_after() -> u16 {
    8
}

/// How Kerrighed places and moves processes: its own legacy setup (the
/// `rr` and `mosix` schedulers of `krg_legacy_scheduler`, which its init
/// script runs by default), or none (processes stay where they start,
/// unless moved by hand with `migrate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scheduler {
    #[default]
    Legacy,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IsoSpec {
    pub(crate) volume: String,
    #[serde(default = "default_compression")]
    pub(crate) compression: Compression,
    pub(crate) output: String,
    /// Keep man pages, info, changelogs, READMEs and translations in the
    /// images (default: leave them out, the cluster does not read them).
    #[serde(default)]
    pub(crate) docs: bool,
}

fn default_compression() -> Compression {
    Compression::Zstd
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Compression {
    Zstd,
    Xz,
}

/// An IPv4 address with its prefix length, written `10.77.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv4Cidr {
    pub(crate) addr: Ipv4Addr,
    pub(crate) prefix: u8,
}

impl Ipv4Cidr {
    pub(crate) fn netmask(self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }
    pub(crate) fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }
    /// The subnet as `10.77.0.0/24`.
    pub(crate) fn subnet(self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }
    pub(crate) fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !u32::from(self.netmask()))
    }
    pub(crate) fn contains(self, ip: Ipv4Addr) -> bool {
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
pub(crate) struct DhcpRange {
    pub(crate) start: Ipv4Addr,
    pub(crate) end: Ipv4Addr,
}

impl DhcpRange {
    pub(crate) fn contains(self, ip: Ipv4Addr) -> bool {
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
    pub(crate) message: String,
}

impl ProfileError {
    /// An error at `span` of `text`: the key there and its line.
    fn at_span(text: &str, file: &Path, span: Option<Range<usize>>, message: String) -> Self {
        let (key, line) = span.map_or((String::new(), 0), |span| {
            (
                SpanIndex::new(text).key_at(&span),
                line_of(text, span.start),
            )
        });
        ProfileError {
            file: file.to_owned(),
            key,
            line,
            message,
        }
    }

    /// An error about dotted `key` (or its nearest parent) in `text`.
    fn at_key(text: &str, file: &Path, key: &str, message: String) -> Self {
        let line = SpanIndex::new(text)
            .span_of(key)
            .map_or(0, |span| line_of(text, span.start));
        ProfileError {
            file: file.to_owned(),
            key: key.to_owned(),
            line,
            message,
        }
    }

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

/// Where a profile name or path points: `smoke` → `<project>/profiles/smoke.toml`.
/// The profile `--profile` defaults to: the Kerrighed 2.4.4 cluster, built
/// with a current toolchain, the one CI builds and boots.
pub(crate) const DEFAULT: &str = "kerrighed-2.4.4";

/// Names profiles had before the default became kerrighed-2.4.4, with what
/// to say to someone who still types them.
const RENAMED: &[(&str, &str)] = &[
    (
        "kerrighed-current",
        "it is now `kerrighed-2.4.4`, the default: leave --profile out",
    ),
    (
        "kerrighed",
        "the Kerrighed 2.4.4 image is now `kerrighed-2.4.4`, the default (leave --profile out); \
the lenny + gcc-4.1 + kerrighed-2.4.1 one is `kerrighed-2.4.1-lenny`",
    ),
];

pub(crate) fn resolve(name_or_path: &str, project: &Path) -> anyhow::Result<PathBuf> {
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
    if let Some((_, now)) = RENAMED.iter().find(|(old, _)| *old == name_or_path) {
        anyhow::bail!("profile `{name_or_path}` was renamed: {now}; profiles shipped: {known}");
    }
    anyhow::bail!(
        "profile `{name_or_path}` not found (looked for {}); profiles shipped: {known}",
        path.display()
    )
}

/// Names of the profiles under `<project>/profiles/`.
pub(crate) fn known_profiles(project: &Path) -> Vec<String> {
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

    /// Parse and validate profile text; `file` is used in error messages
    /// (and included files are found from it).
    pub fn parse(text: &str, file: &Path) -> Result<Profile, ProfileError> {
        let parts = include::parts(text, file)?;
        if parts.is_empty() {
            return Profile::parse_one(text, file);
        }
        // Each error is told by its key, in the file that sets that key.
        let merged = include::merged(&parts);
        let profile: Profile = toml::from_str(&merged).map_err(|e| {
            let key = e
                .span()
                .map(|span| SpanIndex::new(&merged).key_at(&span))
                .unwrap_or_default();
            include::error_for_key(&parts, &key, plain_words(e.message().trim()))
        })?;
        if let Some(problem) = profile.problems().into_iter().next() {
            return Err(include::error_for_key(
                &parts,
                &problem.key,
                problem.message,
            ));
        }
        Ok(profile)
    }

    /// A profile that includes nothing: its errors are at their place in
    /// `text`.
    fn parse_one(text: &str, file: &Path) -> Result<Profile, ProfileError> {
        // Only an error needs the spans: they are looked up then.
        let profile: Profile = toml::from_str(text).map_err(|e| {
            ProfileError::at_span(text, file, e.span(), plain_words(e.message().trim()))
        })?;
        if let Some(problem) = profile.problems().into_iter().next() {
            // The problem names its key: only its line is looked up.
            return Err(ProfileError::at_key(
                text,
                file,
                &problem.key,
                problem.message,
            ));
        }
        Ok(profile)
    }

    /// Things to say on every run that uses this profile.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let untested = self.untested.as_ref().map(|why| {
            format!("this profile has never been built end to end ({why}); the default profile, {DEFAULT}, is the one proven in CI")
        });
        untested
            .into_iter()
            .chain(self.roots().iter()
            .filter(|(_, r)| r.allow_unsigned)
            .map(|(section, r)| {
                format!(
                    "[{section}] allow_unsigned = true: {} {} from {} is installed WITHOUT checking its signature",
                    r.suite, r.arch, r.mirror
                )
            }))
            .collect()
    }

    /// Every root the profile builds, with its section name: node1, nodes,
    /// and the build root when there is one.
    /// In the order they are built: a static nodes root is built in the
    /// build root, so after it.
    pub(crate) fn roots(&self) -> Vec<(&'static str, &RootSpec)> {
        let mut roots = vec![("node1", &self.node1)];
        if let Some(build) = &self.buildroot {
            roots.push(("buildroot", build));
        }
        roots.push(("nodes", &self.nodes));
        roots
    }

    /// Looks up a source by name.
    pub(crate) fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }
}
