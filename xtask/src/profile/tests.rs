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
fn the_2_4_1_lenny_profile_is_the_guides_build() {
    let p = shipped("kerrighed-2.4.1-lenny");
    assert_eq!(p.kernel.kind, KernelKind::Kerrighed);
    assert_eq!(
        (p.nodes.suite.as_str(), p.nodes.arch.as_str()),
        ("lenny", "i386")
    );
    assert_eq!(p.nodes.mirror, "http://archive.debian.org/debian");
    // The host's apt would refuse lenny's expired key: debootstrap it is.
    assert_eq!(p.nodes.bootstrap, Bootstrap::Debootstrap);
    assert_eq!(p.nodes.install, InstallMethod::Include);
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
fn the_default_profile_builds_2_4_4_with_a_current_toolchain_from_reachable_pins() {
    assert_eq!(super::DEFAULT, "kerrighed-2.4.4");
    let (cur, krg) = (shipped(super::DEFAULT), shipped("kerrighed-2.4.1-lenny"));
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
    for needed in ["patch", "bzip2", "ccache", "libc6-dev", "make"] {
        assert!(build.packages.iter().any(|p| p == needed), "{needed}");
    }
    // The kernel's compiler is one the build root installs, and musl-gcc
    // runs it; the era toolchain's compiler is in no build root.
    let cc = cur.kernel.build_root_cc().expect("a build root compiler");
    assert_eq!(cur.kernel.cc.as_deref(), Some(cc));
    assert!(build.packages.iter().any(|p| p == cc), "{cc}");
    assert!(krg.kernel.cc.is_some());
    assert_eq!(krg.kernel.build_root_cc(), None);
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
}

#[test]
fn a_build_root_goes_with_the_current_toolchain_and_the_nodes_arch() {
    let current =
        std::fs::read_to_string(crate::project_root().join("profiles/kerrighed-2.4.4.toml"))
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

/// Kerrighed takes a node's id from the last octet of its address: the
/// range stays in one /24, and out of node1's octet even in another /24.
#[test]
fn a_kerrighed_range_gives_no_node_node1s_id() {
    let current =
        std::fs::read_to_string(crate::project_root().join("profiles/kerrighed-2.4.4.toml"))
            .unwrap();
    let parse = |address: &str, range: &str| {
        let text = current
            .replacen(
                "address = \"10.77.0.1/24\"",
                &format!("address = \"{address}\""),
                1,
            )
            .replacen(
                "dhcp_range = \"10.77.0.100-10.77.0.199\"",
                &format!("dhcp_range = \"{range}\""),
                1,
            );
        Profile::parse(&text, Path::new("profiles/edited.toml"))
    };
    assert!(parse("10.77.0.1/24", "10.77.0.100-10.77.0.199").is_ok());
    let err = parse("10.77.1.150/16", "10.77.0.100-10.77.0.199").unwrap_err();
    assert_eq!(err.key, "network.dhcp_range");
    assert!(
        err.message
            .contains("keep node1's octet 150 (10.77.1.150) out of the range"),
        "{err}"
    );
    assert!(parse("10.77.1.1/16", "10.77.0.100-10.77.0.199").is_ok());
    let err = parse("10.77.0.1/16", "10.77.0.100-10.77.1.9").unwrap_err();
    assert!(err.message.contains("inside one /24"), "{err}");
}

#[test]
fn a_static_userland_is_for_the_nodes_built_in_a_build_root_from_known_sources() {
    let current =
        std::fs::read_to_string(crate::project_root().join("profiles/kerrighed-2.4.4.toml"))
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
    let node1 = format!("{current}\n[node1]\nuserland = \"static\"\n");
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
    let (smoke, krg) = (shipped("smoke"), shipped(super::DEFAULT));
    assert_eq!(smoke.kernel.kind, KernelKind::Stock);
    assert_eq!(smoke.nodes.suite, smoke.node1.suite);
    assert!(smoke.nodes.packages.iter().any(|p| p == "initramfs-tools"));
    assert_eq!(smoke.sources.len(), krg.sources.len());
    assert_eq!(smoke.network.address, krg.network.address);
}

#[test]
fn the_status_page_listens_on_the_cluster_link_unless_told() {
    assert_eq!(shipped("smoke").status.listen, Listen::Cluster);
    let without: String =
        smoke_text()
            .replacen("[status]", "", 1)
            .replacen("listen = \"cluster\"", "", 1);
    let p = Profile::parse(&without, Path::new("profiles/edited.toml")).unwrap();
    assert_eq!(p.status.listen, Listen::Cluster, "the default");
    let text = smoke_text().replacen("listen = \"cluster\"", "listen = \"all\"", 1);
    let p = Profile::parse(&text, Path::new("profiles/edited.toml")).unwrap();
    assert_eq!(p.status.listen, Listen::All);
    let text = smoke_text().replacen("listen = \"cluster\"", "listen = \"everywhere\"", 1);
    let err = Profile::parse(&text, Path::new("profiles/edited.toml")).unwrap_err();
    assert_eq!(err.key, "status.listen");
    assert_eq!(err.line, line_of_text(&text, "everywhere"));
    assert!(err.message.contains("`cluster`"), "{}", err.message);
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let err = error_after("gateway = true", "gateway = true\ngatway = true");
    let text = smoke_text().replacen("gateway = true", "gateway = true\ngatway = true", 1);
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
            "nbmin = 2",
            "nbmin = 2\nscheduler = \"mosix\"",
            "cluster.scheduler",
            "unknown variant `mosix`, expected `legacy` or `none`",
        ),
        (
            "nbmin = 2",
            "nbmin = 2\nsettle = 0",
            "cluster.settle",
            "0 s is not a settle time",
        ),
        (
            "nbmin = 2",
            "nbmin = 2\nlost_after = 2",
            "cluster.lost_after",
            "2 s is not a time to call a member lost",
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
            "nodes.arch",
            "not a Debian architecture",
        ),
        (
            "variant = \"minbase\"",
            "variant = \"minbase\"\nallow_unsigned = true",
            "nodes.allow_unsigned",
            "mmdebstrap checks every Release signature",
        ),
        (
            "variant = \"minbase\"",
            "variant = \"minbase\"\ninstall = \"include\"",
            "nodes.install",
            "`install` is debootstrap's",
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
        let expected_line = line_of_text(&edited, to.split('\n').next_back().unwrap());
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
    let path = root.join("profiles/kerrighed-2.4.1-lenny.toml");
    assert_eq!(resolve(path.to_str().unwrap(), &root).unwrap(), path);
    // The names of before the 2.4.4 default say what they are now.
    let err = resolve("kerrighed-current", &root).unwrap_err().to_string();
    assert!(
        err.contains("renamed") && err.contains("`kerrighed-2.4.4`, the default"),
        "{err}"
    );
    let err = resolve("kerrighed", &root).unwrap_err().to_string();
    assert!(err.contains("`kerrighed-2.4.1-lenny`"), "{err}");
    let err = resolve("nope", &root).unwrap_err().to_string();
    assert!(
        err.contains("profile `nope` not found")
            && err.contains("kerrighed-2.4.1-lenny, kerrighed-2.4.4, smoke"),
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
    assert!(r.contains(Ipv4Addr::new(10, 77, 0, 150)) && !r.contains(Ipv4Addr::new(10, 77, 0, 1)));
    assert!("10.77.0.9-10.77.0.1".parse::<DhcpRange>().is_err());
}

#[test]
fn only_the_profile_never_built_end_to_end_says_so_at_every_command() {
    let era = shipped("kerrighed-2.4.1-lenny");
    let said = era.warnings();
    assert!(
        said.iter()
            .any(|w| w.contains("never been built end to end") && w.contains("kerrighed-2.4.4")),
        "{said:?}"
    );
    for name in [super::DEFAULT, "smoke"] {
        let p = shipped(name);
        assert!(p.untested.is_none() && p.warnings().is_empty(), "{name}");
    }
}

/// A profile and what it includes, in a directory of their own.
fn with_include(profile: &str, base: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), base).unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, profile).unwrap();
    (dir, path)
}

/// The smoke profile with its node1 from `base.toml` beside it.
fn on_base(extra: &str) -> String {
    smoke_text().replace("include = [\"node1\"]", "include = [\"base.toml\"]") + extra
}

fn node1_text() -> String {
    std::fs::read_to_string(crate::project_root().join("profiles/include/node1.toml")).unwrap()
}

#[test]
fn the_shipped_profiles_share_node1_from_one_file() {
    let base = node1_text();
    let (dir, _) = with_include("", &base);
    let alone: Profile = toml::from_str(&format!(
        "{}{base}",
        smoke_text().replace("include = [\"node1\"]", "")
    ))
    .unwrap();
    for name in ["smoke", "kerrighed-2.4.4", "kerrighed-2.4.1-lenny"] {
        let path = crate::project_root().join(format!("profiles/{name}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("[node1]"), "{name} has a [node1] of its own");
        let p = Profile::load(&path).unwrap();
        assert_eq!(p.include, ["node1"]);
        assert_eq!(
            serde_json::to_string(&p.node1).unwrap(),
            serde_json::to_string(&alone.node1).unwrap(),
            "{name}"
        );
    }
    drop(dir);
}

#[test]
fn a_profile_sets_keys_over_what_it_includes() {
    let (_dir, path) = with_include(
        &on_base("\n[node1]\nsuite = \"trixie\"\npackages = [\"dnsmasq\"]\n"),
        &node1_text(),
    );
    let p = Profile::load(&path).unwrap();
    assert_eq!(p.node1.suite, "trixie");
    assert_eq!(p.node1.packages, ["dnsmasq"]);
    // What it does not set comes from the included file.
    assert_eq!(p.node1.arch, "amd64");
    // Written out, it stands alone.
    let written = toml::to_string(&p).unwrap();
    assert!(!written.contains("include"), "{written}");
    assert_eq!(
        toml::to_string(&Profile::parse(&written, &path).unwrap()).unwrap(),
        written
    );
}

#[test]
fn an_error_names_the_file_and_line_that_set_the_key() {
    // In the included file: its path, its line.
    let base = node1_text().replace("arch = \"amd64\"", "arch = \"x86_64\"");
    let (dir, path) = with_include(&on_base(""), &base);
    let err = Profile::load(&path).unwrap_err();
    assert_eq!(err.file, dir.path().join("base.toml"));
    assert_eq!(err.key, "node1.arch");
    assert_eq!(err.line, line_of_text(&base, "x86_64"), "{err}");
    // Set over it in the profile: the profile's line.
    let text = on_base("\n[node1]\narch = \"i486x\"\n");
    let (_dir, path) = with_include(&text, &node1_text());
    let err = Profile::load(&path).unwrap_err();
    assert_eq!(
        (err.file.as_path(), err.key.as_str()),
        (path.as_path(), "node1.arch")
    );
    assert_eq!(err.line, line_of_text(&text, "i486x"), "{err}");
    // A wrong type in the profile's override, found by serde.
    let text = on_base("\n[node1]\npackages = \"dnsmasq\"\n");
    let (_dir, path) = with_include(&text, &node1_text());
    let err = Profile::load(&path).unwrap_err();
    assert_eq!(
        (err.file.as_path(), err.key.as_str()),
        (path.as_path(), "node1.packages")
    );
    assert_eq!(
        err.line,
        line_of_text(&text, "packages = \"dnsmasq\""),
        "{err}"
    );
    // A key missing from the included table: that file's [node1].
    let base = node1_text().replace("suite = \"bookworm\"\n", "");
    let (dir, path) = with_include(&on_base(""), &base);
    let err = Profile::load(&path).unwrap_err();
    assert_eq!(err.file, dir.path().join("base.toml"), "{err}");
    let header = base.lines().position(|l| l == "[node1]").unwrap() + 1;
    assert_eq!(err.line, header, "{err}");
    // A syntax error in the included file.
    let base = node1_text().replace("[node1]", "[node1");
    let (dir, path) = with_include(&on_base(""), &base);
    let err = Profile::load(&path).unwrap_err();
    assert_eq!(err.file, dir.path().join("base.toml"), "{err}");
    let header = base.lines().position(|l| l == "[node1").unwrap() + 1;
    assert_eq!(err.line, header, "{err}");
}

#[test]
fn an_include_that_cannot_be_used_is_refused_at_its_line() {
    let text = smoke_text().replace("include = [\"node1\"]", "include = [\"nowhere\"]");
    let err = Profile::parse(&text, Path::new("profiles/edited.toml")).unwrap_err();
    assert_eq!(err.key, "include");
    assert_eq!(err.line, line_of_text(&text, "nowhere"));
    assert!(
        err.message.contains("profiles/include/nowhere.toml"),
        "{err}"
    );
    let text = smoke_text().replace("include = [\"node1\"]", "include = \"node1\"");
    let err = Profile::parse(&text, Path::new("profiles/edited.toml")).unwrap_err();
    assert!(err.message.contains("list of file names"), "{err}");
    let (dir, path) = with_include(
        &on_base(""),
        &format!("include = [\"x\"]\n{}", node1_text()),
    );
    let err = Profile::load(&path).unwrap_err();
    assert_eq!((&err.file, err.line), (&dir.path().join("base.toml"), 1));
    assert!(err.message.contains("cannot include another"), "{err}");
}
