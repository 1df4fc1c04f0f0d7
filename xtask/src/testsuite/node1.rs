//! e2e-node1 (the node1 stage's layers) and e2e-node1-netns (node1's boot
//! service in network namespaces: full and proxy DHCP, TFTP).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use crate::chroot;
use crate::files;
use crate::host;
use crate::shell::StageShell;

use crate::node1::render::{
    BOOT_LOADER, BOOT_SCRIPT, BOOT_TEMPLATE, EFI_BOOT_LOADER, GUARD_TABLE, NODE1,
};
use crate::node1::status::StatusReport;

use super::smoke::{check_shell, no_mounts_under, SmokeRun, Timings};

/// The node1 stage for real on the smoke build: what its layers hold, and
/// that the roots under them are left as they were.
pub(crate) fn node1_layers(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-node1")?;
    let passwd_before = fs::read(run.root("node1").join("etc/passwd"))?;
    let t = Instant::now();
    run.xtask(&s, &["node1"])?;
    let secs = t.elapsed().as_secs_f64();
    let (n1, nd) = (run.build.join("node1/node1"), run.build.join("node1/nodes"));
    let release = run.release()?;
    let tftp = crate::layout::tftp_dir(&n1);
    for name in [
        BOOT_LOADER.to_owned(),
        EFI_BOOT_LOADER.to_owned(),
        format!("vmlinuz-{release}"),
        format!("initrd.img-{release}"),
    ] {
        ensure!(tftp.join(&name).is_file(), "the boot files lack {name}");
    }
    let script = fs::read_to_string(n1.join(BOOT_TEMPLATE))?;
    ensure!(
        script.contains(&format!("kernel http://{NODE1}/vmlinuz-{release} ")),
        "{BOOT_TEMPLATE} names another kernel:\n{script}"
    );
    for (layer, file) in [
        (&n1, "etc/krgiso/exports-full"),
        (&n1, "etc/krgiso/dnsmasq-full.conf"),
        (&nd, "etc/kerrighed_nodes"),
        (&nd, "etc/fstab"),
    ] {
        ensure!(
            layer.join(file).is_file(),
            "{} lacks {file}",
            layer.display()
        );
    }
    let user = &run.profile.cluster.user;
    for layer in [&n1, &nd] {
        let passwd = fs::read_to_string(layer.join("etc/passwd"))?;
        ensure!(
            passwd.lines().any(|l| l.starts_with(&format!("{user}:x:"))),
            "{user} missing from {}",
            layer.display()
        );
        let shadow = fs::read_to_string(layer.join("etc/shadow"))?;
        let hash = shadow
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .and_then(|l| l.split(':').nth(1));
        ensure!(
            hash.is_some_and(|h| h.starts_with("$6$")),
            "{user} has no password hash in {}",
            layer.display()
        );
    }
    let creds = run.build.join("credentials");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&creds)?.permissions()) & 0o777;
    ensure!(
        mode == 0o600,
        "build/credentials has mode {mode:o}, not 600"
    );
    ensure!(
        fs::read(run.root("node1").join("etc/passwd"))? == passwd_before,
        "the node1 stage changed the node1 root"
    );
    ensure!(
        fs::read_link(n1.join("etc/systemd/system/dnsmasq.service"))? == Path::new("/dev/null"),
        "Debian's dnsmasq.service is not masked"
    );
    Ok(vec![("node1".to_owned(), secs)])
}

/// Network namespaces this check makes, and deletes (with every process
/// left in them) however it ends. Loopback-only: no address outside them
/// is ever contacted.
struct Netns {
    names: Vec<String>,
    pid_files: Vec<PathBuf>,
}

impl Netns {
    fn add(&mut self, s: &StageShell, name: &str) -> Result<()> {
        let sh = s.sh();
        let _ = cmd!(sh, "ip netns del {name}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        s.run(cmd!(sh, "ip netns add {name}"))?;
        self.names.push(name.to_owned());
        s.run(cmd!(sh, "ip netns exec {name} ip link set lo up"))
    }

    /// A veth pair: `a` in namespace `na`, `b` in `nb`, both up.
    fn link(&self, s: &StageShell, (na, a): (&str, &str), (nb, b): (&str, &str)) -> Result<()> {
        let sh = s.sh();
        s.run(cmd!(
            sh,
            "ip link add {a} netns {na} type veth peer name {b} netns {nb}"
        ))?;
        s.run(cmd!(sh, "ip -n {na} link set {a} up"))?;
        s.run(cmd!(sh, "ip -n {nb} link set {b} up"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid_file in &self.pid_files {
            host::stop_daemon(pid_file);
        }
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The namespaces of a netns check: node1, the cluster link's bridge, a
/// client on it, a host on node1's other link, a DHCP server not node1's.
struct Hosts {
    n1: &'static str,
    sw: &'static str,
    cl: &'static str,
    other: &'static str,
    foreign: &'static str,
}

const E2E_HOSTS: Hosts = Hosts {
    n1: "krgiso-e2e-n1",
    sw: "krgiso-e2e-sw",
    cl: "krgiso-e2e-cl",
    other: "krgiso-e2e-ot",
    foreign: "krgiso-e2e-fg",
};

const SECURITY_HOSTS: Hosts = Hosts {
    n1: "krgiso-sec-n1",
    sw: "krgiso-sec-sw",
    cl: "krgiso-sec-cl",
    other: "krgiso-sec-ot",
    foreign: "krgiso-sec-fg",
};

/// node1's root chrooted in a network namespace, joined to a bridge in
/// another: the root is the smoke build's node1 root with its layer
/// stacked over it by overlayfs, writes going to a scratch dir under
/// `build/e2e/NAME`. Everything it set up (daemons, namespaces, mounts) is
/// undone when it drops, however the check ends.
struct Node1Netns {
    // Dropped in this order: the daemons and namespaces, the chroot's
    // mounts, then the overlay.
    ns: Netns,
    mounts: chroot::ChrootMounts,
    overlay: crate::interrupt::Cleanup,
    work: PathBuf,
    merged: PathBuf,
    n1: &'static str,
    sw: &'static str,
}

impl Node1Netns {
    fn set_up(
        run: &SmokeRun,
        s: &StageShell,
        name: &str,
        (n1, sw): (&'static str, &'static str),
    ) -> Result<Node1Netns> {
        let layer = run.build.join("node1/node1");
        ensure!(
            layer.join("usr/local/sbin/krgiso-node1").exists(),
            "run the node1 stage first (e2e-node1)"
        );
        let work = run.project.join("build/e2e").join(name);
        chroot::release_stale(&work, &chroot::SystemMounts)?;
        files::remove_tree(&work)?;
        let merged = work.join("node1");
        for dir in ["upper", "ovl-work", "node1"] {
            fs::create_dir_all(work.join(dir))?;
        }
        let sh = s.sh();
        let lower = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            layer.display(),
            run.root("node1").display(),
            work.join("upper").display(),
            work.join("ovl-work").display()
        );
        s.run(cmd!(sh, "mount -t overlay krgiso-e2e -o {lower} {merged}"))?;
        let merged_for_cleanup = merged.clone();
        let overlay =
            crate::interrupt::Cleanup::register("unmount the e2e node1 overlay", move || {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&merged_for_cleanup)
                    .status();
            });
        let mounts =
            chroot::ChrootMounts::set_up(&merged, &[], std::sync::Arc::new(chroot::SystemMounts))?;
        let mut ns = Netns {
            names: Vec::new(),
            pid_files: ["dnsmasq", "httpd", "radvd", "proxy-lease"]
                .iter()
                .map(|d| merged.join(format!("run/krgiso/{d}.pid")))
                .collect(),
        };
        for name in [n1, sw] {
            ns.add(s, name)?;
        }
        s.run(cmd!(sh, "ip -n {sw} link add br0 type bridge"))?;
        s.run(cmd!(sh, "ip -n {sw} link set br0 up"))?;
        ns.link(s, (n1, "eth-cl"), (sw, "p-n1"))?;
        s.run(cmd!(sh, "ip -n {sw} link set p-n1 master br0"))?;
        Ok(Node1Netns {
            ns,
            mounts,
            overlay,
            work,
            merged,
            n1,
            sw,
        })
    }

    /// node1 with the hosts around it: a client (`cl`) and a DHCP server
    /// (`foreign`, not started) on the cluster link's bridge, and a host on
    /// its other link (`other`, node1 192.0.2.1 there).
    fn with_hosts(run: &SmokeRun, s: &StageShell, name: &str, hosts: &Hosts) -> Result<Node1Netns> {
        host::ensure_tools(
            &[
                host::HostTool::new("udhcpc", "udhcpc"),
                host::HostTool::new("dnsmasq", "dnsmasq-base"),
                host::HostTool::new("curl", "curl"),
            ],
            true,
            s.log_path(),
        )?;
        let mut node1 = Node1Netns::set_up(run, s, name, (hosts.n1, hosts.sw))?;
        node1.attach(s, hosts.cl, "p-cl")?;
        node1.attach(s, hosts.foreign, "p-fg")?;
        node1.ns.add(s, hosts.other)?;
        node1
            .ns
            .link(s, (hosts.n1, "eth-ot"), (hosts.other, "eth0"))?;
        let n1 = hosts.n1;
        s.run(cmd!(s.sh(), "ip -n {n1} addr add 192.0.2.1/24 dev eth-ot"))?;
        Ok(node1)
    }

    /// The DHCP server on the link that is not node1's, started in
    /// namespace `foreign` (192.168.77.1/24): its pid file and lease file.
    fn foreign_server(&mut self, s: &StageShell, foreign: &str) -> Result<(PathBuf, PathBuf)> {
        s.run(cmd!(
            s.sh(),
            "ip -n {foreign} addr add 192.168.77.1/24 dev eth0"
        ))?;
        let (pid, leases) = (
            self.work.join("foreign.pid"),
            self.work.join("foreign.leases"),
        );
        self.ns.pid_files.push(pid.clone());
        start_foreign(s, foreign, &pid, &leases, None)?;
        Ok((pid, leases))
    }

    /// A new namespace `name` whose `eth0` is a port (`port`) of the bridge.
    fn attach(&mut self, s: &StageShell, name: &str, port: &str) -> Result<()> {
        self.ns.add(s, name)?;
        self.ns.link(s, (name, "eth0"), (self.sw, port))?;
        let sw = self.sw;
        s.run(cmd!(s.sh(), "ip -n {sw} link set {port} master br0"))
    }

    /// `krgiso-node1 start` in node1's namespace, its cluster link eth-cl,
    /// without NFS (this host's kernel has no nfsd); returns the status
    /// line it wrote.
    fn start(&self, s: &StageShell, listen: &str) -> Result<String> {
        let (ok, status, text) = self.run_start(s, listen)?;
        ensure!(ok, "krgiso-node1 start failed:\n{text}");
        Ok(status)
    }

    /// `start` that must fail (exit non-zero); returns the status line.
    fn start_failing(&self, s: &StageShell) -> Result<String> {
        let (ok, status, text) = self.run_start(s, "cluster")?;
        ensure!(!ok, "krgiso-node1 start succeeded:\n{text}");
        Ok(status)
    }

    /// Whether `krgiso-node1 start` succeeded, the status line it wrote
    /// (none: empty) and what it said.
    fn run_start(&self, s: &StageShell, listen: &str) -> Result<(bool, String, String)> {
        let sh = s.sh();
        let (n1, merged) = (self.n1, &self.merged);
        let status = merged.join("run/krgiso/status");
        let _ = fs::remove_file(&status);
        let listen = format!("KRGISO_STATUS_LISTEN={listen}");
        let out = cmd!(sh, "ip netns exec {n1} chroot {merged} env KRGISO_NFS=no KRGISO_CLUSTER_IFACE=eth-cl {listen} /usr/local/sbin/krgiso-node1 start")
            .ignore_status()
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        s.note(&text);
        let status = fs::read_to_string(&status).unwrap_or_default();
        Ok((out.status.success(), status, text))
    }

    fn stop(&self, s: &StageShell) -> Result<()> {
        let (n1, merged) = (self.n1, &self.merged);
        s.run(cmd!(
            s.sh(),
            "ip netns exec {n1} chroot {merged} /usr/local/sbin/krgiso-node1 stop"
        ))
    }

    /// A file node1 serves by TFTP (its served dir), read from outside
    /// its root: the links there point into that root.
    fn served(&self, name: &str) -> Result<Vec<u8>> {
        let path = crate::layout::served_dir(&self.merged).join(name);
        let real = match fs::read_link(&path) {
            Ok(target) => self
                .merged
                .join(target.strip_prefix("/").unwrap_or(&target)),
            Err(_) => path,
        };
        fs::read(&real).with_context(|| format!("{name}, served by node1 ({})", real.display()))
    }

    /// The pid of node1's daemon `name` if it is running.
    fn daemon(&self, name: &str) -> Option<u32> {
        fs::read_to_string(self.merged.join(format!("run/krgiso/{name}.pid")))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Takes it all down and checks that no mount is left under the work dir.
    fn finish(self, s: &StageShell) -> Result<()> {
        let Node1Netns {
            ns,
            mounts,
            overlay,
            work,
            merged,
            ..
        } = self;
        drop(ns);
        drop(mounts);
        s.run(cmd!(s.sh(), "umount {merged}"))?;
        overlay.dismiss();
        no_mounts_under(&work)
    }
}

/// udhcpc's script for the test's clients: it writes the address it was
/// given to `client.lease` beside it.
fn client_script(work: &Path) -> Result<PathBuf> {
    let script = work.join("client.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound|renew) echo \"$ip\" > {} ;; esac\nexit 0\n",
            script.with_extension("lease").display()
        ),
    )?;
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(script)
}

/// A DHCP server that is not node1's, on `eth0` of namespace `foreign`
/// (192.168.77.1/24 already there), with `option` if given; its earlier
/// run, if any, stopped first.
fn start_foreign(
    s: &StageShell,
    foreign: &str,
    pid: &Path,
    leases: &Path,
    option: Option<&str>,
) -> Result<()> {
    host::stop_daemon(pid);
    std::thread::sleep(Duration::from_millis(300));
    let _ = fs::remove_file(leases);
    let option = option.map(|o| format!("--dhcp-option={o}"));
    let sh = s.sh();
    s.run(cmd!(sh, "ip netns exec {foreign} dnsmasq --conf-file=/dev/null --port=0 --interface=eth0 --bind-interfaces --dhcp-range=192.168.77.50,192.168.77.60,255.255.255.0,1h {option...} --dhcp-leasefile={leases} --pid-file={pid}"))
}

/// A DHCP client on `iface` in namespace `ns`: the lease it got, if any.
fn client_lease(
    s: &StageShell,
    ns: &str,
    iface: &str,
    script: &Path,
    tries: &str,
) -> Result<Option<String>> {
    let sh = s.sh();
    let lease = script.with_extension("lease");
    let _ = fs::remove_file(&lease);
    let got = cmd!(
        sh,
        "ip netns exec {ns} udhcpc -i {iface} -n -q -t {tries} -T 1 -s {script}"
    )
    .ignore_status()
    .quiet()
    .ignore_stdout()
    .ignore_stderr()
    .output()?;
    s.note(&format!("udhcpc on {ns}/{iface}: {}", got.status));
    Ok(fs::read_to_string(&lease)
        .ok()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty()))
}

/// `/status.json` from node1's web server at `host`, asked from network
/// namespace `ns`: its text and what it says.
fn status_json(s: &StageShell, ns: &str, host: &str) -> Result<(String, StatusReport)> {
    let sh = s.sh();
    let json = cmd!(
        sh,
        "ip netns exec {ns} curl -sS --fail --max-time 20 http://{host}/status.json"
    )
    .read()?;
    let report = StatusReport::parse(&json)?;
    Ok((json, report))
}

/// node1's status page, from the client on the cluster link: the client's
/// row with its lease and the four boot files it fetched, node1's services
/// up; the page shows the row. From the other link (routed to node1's
/// cluster address, which Linux would answer there), nothing, but for
/// node1's firewall rule.
fn check_status_page(
    s: &StageShell,
    merged: &Path,
    (n1, client, other): (&str, &str, &str),
    lease: &str,
    node1_ip: std::net::Ipv4Addr,
) -> Result<()> {
    s.step("the status page: the client's lease and boot files, nothing from another link");
    let sh = s.sh();
    let node1_ip = node1_ip.to_string();
    let (json, report) = status_json(s, client, &node1_ip)?;
    ensure!(
        report.node1.mode == "full" && report.node1.iface == "eth-cl",
        "status.json says mode {} on {}",
        report.node1.mode,
        report.node1.iface
    );
    let services = &report.node1.services;
    ensure!(
        services.dhcp == "up" && services.tftp == "up" && services.http == "up",
        "status.json: services {services:?}"
    );
    let mac = cmd!(sh, "ip netns exec {client} cat /sys/class/net/eth0/address").read()?;
    let node = report
        .node(lease)
        .with_context(|| format!("status.json has no row for the client {lease}:\n{json}"))?;
    ensure!(
        node.mac == mac.trim() && !node.lease_at.is_empty(),
        "status.json: the client's row has MAC {:?} (it is {:?}) and lease time {:?}",
        node.mac,
        mac.trim(),
        node.lease_at
    );
    ensure!(
        node.pxe.boot_loader && node.pxe.boot_script && node.pxe.kernel && node.pxe.initrd,
        "status.json: the client fetched all four boot files, the page says {:?}",
        node.pxe
    );
    ensure!(
        json.lines()
            .all(|l| !l.contains("password") && !l.contains("PRIVATE KEY")),
        "status.json shows a secret"
    );
    let page = cmd!(
        sh,
        "ip netns exec {client} curl -sS --fail --max-time 20 http://{node1_ip}/"
    )
    .read()?;
    ensure!(
        page.contains(&format!(">{lease}<")) && page.contains("<title>krgiso cluster</title>"),
        "the status page has no row for {lease}:\n{page}"
    );

    s.run(cmd!(sh, "ip -n {other} addr add 192.0.2.2/24 dev eth0"))?;
    s.run(cmd!(
        sh,
        "ip -n {other} route add {node1_ip}/32 via 192.0.2.1"
    ))?;
    let from_other = || {
        cmd!(
            sh,
            "ip netns exec {other} curl -sS --max-time 3 http://{node1_ip}/status.json"
        )
        .quiet()
        .ignore_status()
        .output()
    };
    let outside = from_other()?;
    ensure!(
        !outside.status.success() && outside.stdout.is_empty(),
        "the status page answered a request from outside the cluster link: {}",
        String::from_utf8_lossy(&outside.stdout)
    );
    // The control: without node1's firewall rule the same request is
    // answered (Linux takes it for its address on any link), so the rule is
    // what keeps the page off that link, not the route.
    let table = GUARD_TABLE;
    s.run(cmd!(
        sh,
        "ip netns exec {n1} chroot {merged} nft delete table inet {table}"
    ))?;
    let unguarded = from_other()?;
    ensure!(
        unguarded.status.success() && StatusReport::parse(&String::from_utf8_lossy(&unguarded.stdout)).is_ok(),
        "without the firewall rule the request from the other link got no page either: the check above proves nothing"
    );
    s.note("status.json: the client's row complete; nothing answered from the other link");
    Ok(())
}

/// The URLs an iPXE script loads the kernel and initramfs from.
fn boot_urls(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter(|l| l.starts_with("kernel ") || l.starts_with("initrd "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect()
}

/// node1's boot-time service for real, in network namespaces: the node1
/// root (its layer stacked over it with overlayfs, writes going to a
/// scratch dir) chrooted in a namespace joined to a client by a bridge.
/// Full DHCP: the client gets a lease in the range and fetches iPXE and its
/// script by TFTP and the kernel by HTTP; node1's other link gets no
/// lease. Then with a foreign DHCP server on the link first: node1 comes up in proxy mode,
/// hands out no lease and keeps its own. (This host's kernel has no nfsd:
/// the NFS export is checked by the QEMU boot test, where node1 runs its
/// own kernel.) What tries node1 from outside is `attackers`.
pub(crate) fn node1_netns(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-netns")?;
    let t = Instant::now();
    let hosts = &E2E_HOSTS;
    let (n1, cl, other, foreign) = (hosts.n1, hosts.cl, hosts.other, hosts.foreign);
    let mut node1 = Node1Netns::with_hosts(&run, &s, "netns", hosts)?;
    let sh = s.sh();
    let (work, merged, layer) = (
        node1.work.clone(),
        node1.merged.clone(),
        run.build.join("node1/node1"),
    );
    let client_script = client_script(&work)?;
    s.step("full DHCP: no other server on the cluster link");
    let status = node1.start(&s, "cluster")?;
    ensure!(
        status.contains("iface=eth-cl")
            && status.contains("dhcp=full")
            && status.contains("tftp=ok")
            && status.contains("http=ok"),
        "status: {status}"
    );
    let lease = client_lease(&s, cl, "eth0", &client_script, "5")?
        .context("the client got no lease from node1")?;
    let ip: std::net::Ipv4Addr = lease
        .parse()
        .with_context(|| format!("a lease that is not an address: {lease}"))?;
    ensure!(
        run.profile.network.dhcp_range.contains(ip),
        "the lease {ip} is outside the profile's range"
    );
    s.run(cmd!(sh, "ip -n {cl} addr add {lease}/24 dev eth0"))?;
    let release = run.release()?;
    // What a node fetches, the way it fetches it: iPXE and its script by
    // TFTP, the kernel and initramfs from the URLs in the script.
    let script = fs::read_to_string(crate::layout::served_dir(&merged).join(BOOT_SCRIPT))?;
    let template = fs::read_to_string(layer.join(BOOT_TEMPLATE))?;
    ensure!(
        script == template.replace(NODE1, &run.profile.network.address.addr.to_string()),
        "the boot script node1 serves is not its template with the profile's address:\n{script}"
    );
    let urls = boot_urls(&script);
    ensure!(
        urls.len() == 2,
        "{BOOT_SCRIPT} has no kernel and initramfs URLs:\n{script}"
    );
    let node1_ip = run.profile.network.address.addr;
    let fetches = [BOOT_LOADER, BOOT_SCRIPT]
        .map(|name| (name.to_owned(), format!("tftp://{node1_ip}/{name}")))
        .into_iter()
        .chain(
            urls.iter()
                .map(|u| (u.rsplit('/').next().unwrap_or(u).to_owned(), u.to_string())),
        );
    for (name, url) in fetches {
        let fetched = work.join(format!("fetched-{name}"));
        s.run(cmd!(
            sh,
            "ip netns exec {cl} curl -sS --fail --max-time 60 -o {fetched} {url}"
        ))?;
        // The boot script is made at boot; the rest is the image's.
        let expected = if name == BOOT_SCRIPT {
            node1.served(&name)?
        } else {
            fs::read(crate::layout::tftp_dir(&layer).join(&name))?
        };
        ensure!(
            fs::read(&fetched)? == expected,
            "{name} fetched from {url} differs from the one in the image"
        );
    }
    let served = fs::read_to_string(merged.join("run/krgiso/httpd.log")).unwrap_or_default();
    ensure!(
        served.contains(&format!("vmlinuz-{release}")),
        "node1's web server logged no request for the kernel:\n{served}"
    );
    let who = cmd!(sh, "ps -o user= -C busybox")
        .quiet()
        .ignore_status()
        .read()?;
    ensure!(
        !who.is_empty() && who.lines().all(|u| u.trim() != "root"),
        "node1's web server runs as root (or not at all): {who:?}"
    );
    ensure!(
        node1.daemon("radvd").is_some(),
        "node1 answers no IPv6 router solicitation on its own link (radvd): {}",
        fs::read_to_string(merged.join("run/krgiso/radvd.log")).unwrap_or_default()
    );
    let stray = client_lease(&s, other, "eth0", &client_script, "2")?;
    ensure!(
        stray.is_none(),
        "node1 gave a lease on a link that is not the cluster link: {stray:?}"
    );
    check_status_page(&s, &merged, (n1, cl, other), &lease, node1_ip)?;
    node1.stop(&s)?;
    s.step("the status page with listen = \"all\": answers on the other link too");
    node1.start(&s, "all")?;
    let (_, report) = status_json(&s, other, "192.0.2.1")?;
    ensure!(
        report.node1.status_page == "all",
        "the status page does not say it listens everywhere: {}",
        report.node1.status_page
    );
    node1.stop(&s)?;
    let _ = fs::remove_file(merged.join("run/krgiso/dnsmasq.leases"));

    s.step("proxy DHCP: another server answers on the cluster link first");
    let (_, fleases) = node1.foreign_server(&s, foreign)?;
    // node1's dnsmasq log goes on from the full-mode run above, which
    // acknowledged leases: only what proxy mode adds is read below.
    let dnsmasq_log = merged.join("run/krgiso/dnsmasq.log");
    let log_before = fs::metadata(&dnsmasq_log).map(|m| m.len()).unwrap_or(0);
    let status = node1.start(&s, "cluster")?;
    ensure!(
        status.contains("dhcp=proxy"),
        "node1 did not choose proxy DHCP with another server on the link: {status}"
    );
    ensure!(
        node1.daemon("radvd").is_none(),
        "node1 sends IPv6 router advertisements on a link that has a DHCP server of its own"
    );
    let _ = cmd!(sh, "ip -n {cl} addr flush dev eth0").quiet().run();
    let lease = client_lease(&s, cl, "eth0", &client_script, "5")?
        .context("the client got no lease at all")?;
    ensure!(
        lease.starts_with("192.168.77."),
        "the client's lease {lease} did not come from the other server"
    );
    let foreign_leases = fs::read_to_string(&fleases).unwrap_or_default();
    ensure!(
        foreign_leases.contains(&format!(" {lease} ")),
        "the other server has no record of the client's lease {lease}: {foreign_leases:?}"
    );
    let log = fs::read(&dnsmasq_log).unwrap_or_default();
    let (full_log, proxy_log) = log.split_at((log_before as usize).min(log.len()));
    // The log where full mode's acknowledgements are is the one read.
    ensure!(
        String::from_utf8_lossy(full_log).contains("DHCPACK"),
        "{} does not show full mode's leases: not node1's DHCP log",
        dnsmasq_log.display()
    );
    let proxy_log = String::from_utf8_lossy(proxy_log);
    let acks: Vec<&str> = proxy_log
        .lines()
        .filter(|l| l.contains("DHCPACK"))
        .collect();
    ensure!(
        acks.is_empty(),
        "node1 acknowledged leases in proxy mode: {acks:?}"
    );
    let script = fs::read_to_string(crate::layout::served_dir(&merged).join(BOOT_SCRIPT))?;
    let urls = boot_urls(&script);
    ensure!(
        script.contains("nfsroot=192.168.77.")
            && !urls.is_empty()
            && urls.iter().all(|u| u.starts_with("http://192.168.77.")),
        "in proxy mode the nodes are not sent to node1's address on that subnet:\n{script}"
    );
    let kernel_url = urls[0];
    s.run(cmd!(sh, "ip -n {cl} addr add {lease}/24 dev eth0"))?;
    let fetched = work.join("fetched-proxy-kernel");
    s.run(cmd!(
        sh,
        "ip netns exec {cl} curl -sS --fail --max-time 60 -o {fetched} {kernel_url}"
    ))?;
    proxy_lease_is_kept(&s, &merged, n1)?;
    node1.stop(&s)?;
    node1.finish(&s)?;
    Ok(vec![(
        "node1 boot service in namespaces (full, proxy)".to_owned(),
        t.elapsed().as_secs_f64(),
    )])
}

/// In proxy mode node1's address on the LAN is a lease: added without a
/// prefix route (the route node1 adds loses to any other), renewed by
/// node1's udhcpc, and its loss (here: udhcpc told to release it) is in
/// the status line.
fn proxy_lease_is_kept(s: &StageShell, merged: &Path, n1: &str) -> Result<()> {
    let sh = s.sh();
    let run = merged.join("run/krgiso");
    let serve = fs::read_to_string(run.join("link.env"))?
        .lines()
        .find_map(|l| l.strip_prefix("SERVE=").map(str::to_owned))
        .context("link.env has no SERVE")?;
    let addrs = cmd!(sh, "ip -n {n1} -4 -o addr show dev eth-cl")
        .quiet()
        .read()?;
    ensure!(
        addrs
            .lines()
            .any(|l| l.contains(&format!(" {serve}/")) && l.contains("noprefixroute")),
        "node1's proxy address {serve} was added with its prefix route: {addrs}"
    );
    let routes = cmd!(sh, "ip -n {n1} -4 route show dev eth-cl")
        .quiet()
        .read()?;
    ensure!(
        routes
            .lines()
            .any(|l| l.starts_with("192.168.77.0/24") && l.contains("metric 1024")),
        "no route to the LAN's subnet with metric 1024 on the cluster link: {routes}"
    );
    let kept = || fs::read_to_string(run.join("proxy-lease.env")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kept().contains(&format!("LEASE_IP={serve}\n")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        kept().contains(&format!("LEASE_IP={serve}\n")),
        "node1 does not keep its lease of {serve} from the LAN's server: {:?}",
        kept()
    );
    let pid: i32 = fs::read_to_string(run.join("proxy-lease.pid"))?
        .trim()
        .parse()
        .context("proxy-lease.pid")?;
    // SAFETY: the udhcpc node1 started; SIGUSR2 makes it release the lease.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    let status = || fs::read_to_string(run.join("status")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status().contains("dhcp=proxy(lease-lost)") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        status().contains("dhcp=proxy(lease-lost)"),
        "the lost lease is not in node1's status line: {}",
        status()
    );
    s.note(&format!(
        "proxy mode: {serve} added noprefixroute, its lease kept by udhcpc, its loss in the status line"
    ));
    Ok(())
}

/// In proxy mode the link is a LAN other hosts share: the nodes' root is
/// for the addresses that fetched the boot script by TFTP, each told to
/// node1 by dnsmasq (`--dhcp-script`, nfs-client). A lease from the LAN's
/// server is not enough, and neither is the kernel by HTTP.
fn proxy_export_follows_the_boot_script(
    s: &StageShell,
    merged: &Path,
    cl: &str,
    lease: &str,
    kernel_url: &str,
) -> Result<()> {
    let sh = s.sh();
    let clients = merged.join("run/krgiso/nfs-clients");
    let listed = || fs::read_to_string(&clients).unwrap_or_default();
    let host = kernel_url
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    let fetched = merged.with_file_name("fetched-proxy-kernel");
    s.run(cmd!(
        sh,
        "ip netns exec {cl} curl -sS --fail --max-time 60 -o {fetched} {kernel_url}"
    ))?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        listed().trim().is_empty(),
        "before the client fetched its boot script, node1 would export the root to: {:?}",
        listed()
    );
    let url = format!("tftp://{host}/{BOOT_SCRIPT}");
    s.run(cmd!(
        sh,
        "ip netns exec {cl} curl -sS --fail --max-time 20 -o /dev/null {url}"
    ))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed().trim() != lease && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        listed().trim() == lease,
        "after {lease} fetched {url}, node1 would export the root to {:?}, not to exactly {lease}",
        listed()
    );
    s.note(&format!(
        "proxy mode: the root is for {lease} once it fetched its boot script, for nobody before"
    ));
    Ok(())
}

/// The ports node1's NFS and RPC services take (rpcbind, nfsd, mountd's
/// usual one), and ssh.
const RPC_PORTS: [u16; 3] = [111, 2049, 20048];

/// The ports of `ports` that a TCP connection from namespace `ns` reaches
/// at `address`.
fn reachable(ns: &str, address: std::net::Ipv4Addr, ports: &[u16]) -> Result<Vec<u16>> {
    let ports = ports.to_vec();
    host::in_netns(ns, move || {
        ports
            .into_iter()
            .filter(|&p| {
                let to = std::net::SocketAddr::from((address, p));
                std::net::TcpStream::connect_timeout(&to, Duration::from_millis(1500)).is_ok()
            })
            .collect()
    })
}

/// How many packets node1's kernel dropped by reverse-path filtering.
fn rp_filtered(s: &StageShell, n1: &str) -> Result<u64> {
    let netstat = cmd!(s.sh(), "ip netns exec {n1} cat /proc/net/netstat").read()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "IPReversePathFilter")
        .and_then(|(_, v)| v.parse().ok())
        .context("no IPReversePathFilter counter in /proc/net/netstat")
}

/// node1's firewall (guard.nft, loaded by its start), tried from the other
/// link: with stand-in listeners on the NFS and RPC ports in node1's
/// namespace (this host runs no nfsd in it), nothing but ssh answers from
/// there, at node1's address on that link or routed to its cluster
/// address, and TFTP does not either; from the cluster link they all
/// answer. A packet with a cluster source that comes in on the other link
/// is dropped by reverse-path filtering. sshd takes a password only from
/// the cluster subnet.
fn uplink_guard(
    s: &StageShell,
    node1: &Node1Netns,
    (n1, cl, other): (&str, &str, &str),
    node1_ip: std::net::Ipv4Addr,
) -> Result<()> {
    s.step("node1's firewall, tried from the other link");
    let sh = s.sh();
    let mut ports = RPC_PORTS.to_vec();
    ports.push(22);
    let listen = ports.clone();
    let _listeners = host::in_netns(n1, move || {
        listen
            .iter()
            .map(|&p| std::net::TcpListener::bind(("0.0.0.0", p)))
            .collect::<std::io::Result<Vec<_>>>()
    })?
    .context("stand-in listeners in node1's namespace")?;
    let uplink: std::net::Ipv4Addr = "192.0.2.1".parse()?;
    for address in [uplink, node1_ip] {
        let open = reachable(other, address, &ports)?;
        ensure!(
            open == [22],
            "from the other link, {address} answers on {open:?}: only ssh (22) may"
        );
    }
    let open = reachable(cl, node1_ip, &ports)?;
    ensure!(
        open == ports,
        "from the cluster link node1 answers only on {open:?} of {ports:?}: the firewall is in the way"
    );
    // node1's web server (the boot files, the status page) listens on the
    // cluster address; routed there from the uplink, it is dropped.
    for address in [uplink, node1_ip] {
        ensure!(
            reachable(other, address, &[80])?.is_empty(),
            "from the other link, HTTP answers at {address}"
        );
    }
    ensure!(
        reachable(cl, node1_ip, &[80])? == [80],
        "node1's web server does not answer the cluster link"
    );
    let url = format!("tftp://{node1_ip}/{BOOT_SCRIPT}");
    let tftp = cmd!(sh, "ip netns exec {other} curl -sS --max-time 3 {url}")
        .quiet()
        .ignore_status()
        .output()?;
    ensure!(!tftp.status.success(), "TFTP answered from the other link");
    // A cluster address from the wrong side: strict rp_filter drops it.
    let before = rp_filtered(s, n1)?;
    s.run(cmd!(sh, "ip -n {other} addr add 10.77.0.250/32 dev eth0"))?;
    let _ = cmd!(
        sh,
        "ip netns exec {other} curl -sS --max-time 2 --interface 10.77.0.250 telnet://192.0.2.1:22"
    )
    .quiet()
    .ignore_status()
    .output();
    s.run(cmd!(sh, "ip -n {other} addr del 10.77.0.250/32 dev eth0"))?;
    let after = rp_filtered(s, n1)?;
    ensure!(
        after > before,
        "a packet from the other link with a cluster source (10.77.0.250) was not dropped by reverse-path filtering ({before} -> {after})"
    );
    // sshd's own reading of its configuration, for a client on each side.
    let merged = &node1.merged;
    let key = "/run/krgiso/e2e-hostkey";
    for f in [key.to_owned(), format!("{key}.pub")] {
        let _ = fs::remove_file(merged.join(f.trim_start_matches('/')));
    }
    fs::create_dir_all(merged.join("run/sshd"))?;
    let no_passphrase = "";
    s.run(cmd!(
        sh,
        "chroot {merged} ssh-keygen -q -t ed25519 -N {no_passphrase} -f {key}"
    ))?;
    for (from, want) in [("192.0.2.2", "no"), ("10.77.0.150", "yes")] {
        let said = cmd!(
            sh,
            "chroot {merged} /usr/sbin/sshd -T -h {key} -C user=krg,host=client,addr={from}"
        )
        .read()?;
        ensure!(
            said.lines()
                .any(|l| l == format!("passwordauthentication {want}")),
            "sshd on node1 says passwordauthentication is not {want} for a client at {from}"
        );
    }
    s.note("from the other link only ssh answers, by key (no TFTP, HTTP, rpcbind, NFS, mountd); a forged cluster source is dropped");
    Ok(())
}

/// What a foreign DHCP server sends is untrusted: offers node1 must not
/// serve beside (an option 1 of two values, a /1 mask, a mask with a hole)
/// are refused with a status line that says why; no DHCP from node1, no
/// route wider than /16, nothing run from what the server sent.
fn refused_offers(
    s: &StageShell,
    node1: &Node1Netns,
    foreign: &str,
    pid: &Path,
    leases: &Path,
) -> Result<()> {
    let sh = s.sh();
    let n1 = node1.n1;
    for (option, why) in [
        ("1,255.255.255.0,1.2.3.4", "is not a dotted quad"),
        ("1,128.0.0.0", "is wider than /16"),
        ("1,255.0.255.0", "is not contiguous"),
    ] {
        s.step(&format!("a foreign offer with option {option}: refused"));
        start_foreign(s, foreign, pid, leases, Some(option))?;
        let status = node1.start_failing(s)?;
        ensure!(
            status.contains("dhcp=failed(") && status.contains(why) && status.contains("tftp=off"),
            "an offer with option {option} was not refused (\"{why}\"): {status:?}"
        );
        ensure!(
            node1.daemon("dnsmasq").is_none(),
            "node1 runs dnsmasq beside a refused offer ({option})"
        );
        let routes = cmd!(sh, "ip -n {n1} -4 -o route show").read()?;
        let wide: Vec<&str> = routes
            .lines()
            .filter(|r| {
                let dest = r.split_whitespace().next().unwrap_or("");
                dest == "default"
                    || dest
                        .split_once('/')
                        .is_some_and(|(_, bits)| bits.parse::<u8>().is_ok_and(|b| b < 16))
            })
            .collect();
        ensure!(
            wide.is_empty(),
            "an offer with option {option} gave node1 routes wider than /16: {wide:?}"
        );
        node1.stop(s)?;
    }
    Ok(())
}

/// e2e-security's hosts that try node1 from outside, in network
/// namespaces around node1's root chrooted in its own: one on the uplink
/// side; one on a proxy-mode LAN that has a lease from the LAN's server but
/// did not PXE-boot from node1; DHCP servers that offer what node1 must
/// refuse. Only loopback and these namespaces are contacted.
pub(crate) fn attackers(run: &SmokeRun, s: &StageShell) -> Result<()> {
    let hosts = &SECURITY_HOSTS;
    let (n1, cl, other, foreign) = (hosts.n1, hosts.cl, hosts.other, hosts.foreign);
    let mut node1 = Node1Netns::with_hosts(run, s, "security-netns", hosts)?;
    let sh = s.sh();
    let node1_ip = run.profile.network.address.addr;
    s.run(cmd!(sh, "ip -n {other} addr add 192.0.2.2/24 dev eth0"))?;
    // The uplink host routes node1's cluster address through node1.
    let to_node1 = format!("{node1_ip}/32");
    s.run(cmd!(sh, "ip -n {other} route add {to_node1} via 192.0.2.1"))?;
    s.run(cmd!(sh, "ip -n {cl} addr add 10.77.0.150/24 dev eth0"))?;

    s.step("the uplink host: node1 with its status page on the cluster link only");
    node1.start(s, "cluster")?;
    uplink_guard(s, &node1, (n1, cl, other), node1_ip)?;
    node1.stop(s)?;

    s.step("a host on a proxy-mode LAN that did not PXE-boot from node1");
    let (work, merged) = (node1.work.clone(), node1.merged.clone());
    let script = client_script(&work)?;
    s.run(cmd!(sh, "ip -n {cl} addr flush dev eth0"))?;
    let (fpid, fleases) = node1.foreign_server(s, foreign)?;
    let status = node1.start(s, "cluster")?;
    ensure!(
        status.contains("dhcp=proxy"),
        "node1 did not choose proxy DHCP: {status}"
    );
    let lease = client_lease(s, cl, "eth0", &script, "5")?
        .context("the LAN host got no lease from the LAN's server")?;
    s.run(cmd!(sh, "ip -n {cl} addr add {lease}/24 dev eth0"))?;
    let served = fs::read_to_string(crate::layout::served_dir(&merged).join(BOOT_SCRIPT))?;
    let kernel_url = boot_urls(&served)
        .first()
        .map(|u| u.to_string())
        .context("node1's boot script has no kernel URL")?;
    proxy_export_follows_the_boot_script(s, &merged, cl, &lease, &kernel_url)?;
    node1.stop(s)?;

    refused_offers(s, &node1, foreign, &fpid, &fleases)?;
    node1.finish(s)
}

/// How many PXE clients boot at once in e2e-pxe-crowd.
const CROWD: usize = 24;
/// The bound the crowd must boot in: every client's lease, boot loader,
/// script, kernel and initramfs, from the moment all start.
const CROWD_BOOT_BOUND_S: f64 = 30.0;

/// The PXE clients of the crowd, killed (each with what it started) if the
/// check ends before they do.
struct Crowd(Vec<std::process::Child>);

impl Drop for Crowd {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                // SAFETY: the process group of a client this check started.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
            }
        }
    }
}

/// When one client ended each phase of `pxe-client.sh`, in seconds since
/// `t0` (Unix time).
fn client_phases(times: &str, t0: f64) -> Vec<(String, f64)> {
    times
        .lines()
        .filter_map(|l| {
            let (phase, at) = l.split_once(' ')?;
            Some((phase.to_owned(), at.trim().parse::<f64>().ok()? - t0))
        })
        .collect()
}

/// 24 PXE clients at once against node1's boot service, in network
/// namespaces on one bridge: each gets a lease, the boot loader and script
/// by TFTP and the kernel and initramfs by HTTP, as a node does, then the
/// kernel again by TFTP. Every lease is distinct and in the range, every
/// file is the one node1 serves, all within CROWD_BOOT_BOUND_S; dnsmasq is
/// still up and the status page lists every client with its four files.
pub(crate) fn pxe_crowd(project: &Path) -> Result<Timings> {
    let run = SmokeRun::built(project)?;
    let s = check_shell(project, "e2e-pxe-crowd")?;
    host::ensure_tools(
        &[
            host::HostTool::new("udhcpc", "udhcpc"),
            host::HostTool::new("curl", "curl"),
        ],
        true,
        s.log_path(),
    )?;
    let mut node1 = Node1Netns::set_up(
        &run,
        &s,
        "crowd",
        ("krgiso-e2e-crowd-n1", "krgiso-e2e-crowd-sw"),
    )?;
    let clients: Vec<String> = (1..=CROWD).map(|i| format!("krgiso-e2e-c{i:02}")).collect();
    s.step(&format!(
        "{CROWD} client namespaces on node1's cluster link"
    ));
    for (i, name) in clients.iter().enumerate() {
        node1.attach(&s, name, &format!("p-c{:02}", i + 1))?;
    }
    let status = node1.start(&s, "cluster")?;
    ensure!(
        status.contains("dhcp=full"),
        "node1 did not come up in full DHCP mode: {status}"
    );
    let dnsmasq = node1
        .daemon("dnsmasq")
        .context("node1's dnsmasq is not running")?;

    let script = String::from_utf8_lossy(&node1.served(BOOT_SCRIPT)?).into_owned();
    let urls = boot_urls(&script);
    ensure!(
        urls.len() == 2,
        "{BOOT_SCRIPT} has no kernel and initramfs URLs:\n{script}"
    );
    let served = |name: &str| node1.served(name);
    let file_name = |url: &str| url.rsplit('/').next().unwrap_or(url).to_owned();
    let expected = [
        ("loader", served(BOOT_LOADER)?),
        ("script", served(BOOT_SCRIPT)?),
        ("kernel", served(&file_name(urls[0]))?),
        ("initrd", served(&file_name(urls[1]))?),
        ("tftp-kernel", served(&file_name(urls[0]))?),
    ];

    s.step(&format!("{CROWD} PXE clients boot at once"));
    let program = node1.work.join("pxe-client.sh");
    fs::write(&program, include_str!("pxe-client.sh"))?;
    // udhcpc runs it as its script: it must be executable.
    fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let server = run.profile.network.address.addr.to_string();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let started = Instant::now();
    let mut crowd = Crowd(Vec::new());
    for name in &clients {
        let dir = node1.work.join(name);
        fs::create_dir_all(&dir)?;
        let log = fs::File::create(dir.join("log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", name, "sh"])
            .arg(&program)
            .arg(&dir)
            .args([server.as_str(), BOOT_LOADER, BOOT_SCRIPT, urls[0], urls[1]])
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting PXE client {name}"))?;
        crowd.0.push(child);
    }
    let deadline = Duration::from_secs(300);
    for (child, name) in crowd.0.iter_mut().zip(&clients) {
        let left = deadline.saturating_sub(started.elapsed());
        let status = wait_with_deadline(child, left)?;
        let log = fs::read_to_string(node1.work.join(name).join("log")).unwrap_or_default();
        ensure!(
            status.is_some_and(|s| s.success()),
            "PXE client {name} failed ({status:?}):\n{log}"
        );
    }
    let all_done = started.elapsed().as_secs_f64();

    let mut leases = std::collections::BTreeSet::new();
    let (mut booted, mut leased) = (Vec::new(), Vec::new());
    let (mut tftp_from, mut tftp_to) = (f64::MAX, 0.0f64);
    for name in &clients {
        let dir = node1.work.join(name);
        let lease = fs::read_to_string(dir.join("lease"))?.trim().to_owned();
        let ip: std::net::Ipv4Addr = lease
            .parse()
            .with_context(|| format!("{name}: a lease that is not an address: {lease:?}"))?;
        ensure!(
            run.profile.network.dhcp_range.contains(ip),
            "{name}: the lease {ip} is outside the profile's range"
        );
        ensure!(
            leases.insert(ip),
            "{name}: the lease {ip} was given to another client too"
        );
        for (file, want) in &expected {
            ensure!(
                fs::read(dir.join(file))? == *want,
                "{name}: {file} differs from the one node1 serves"
            );
        }
        let phases = client_phases(&fs::read_to_string(dir.join("times"))?, t0);
        let at = |phase: &str| {
            phases
                .iter()
                .find(|(p, _)| p == phase)
                .map(|(_, t)| *t)
                .with_context(|| format!("{name} never reached {phase}"))
        };
        leased.push(at("lease")?);
        booted.push(at("booted")?);
        tftp_from = tftp_from.min(at("booted")?);
        tftp_to = tftp_to.max(at("tftp-kernel")?);
    }
    let last_boot = booted.iter().copied().fold(0.0, f64::max);
    let last_lease = leased.iter().copied().fold(0.0, f64::max);
    ensure!(
        last_boot <= CROWD_BOOT_BOUND_S,
        "the last of {CROWD} clients had its kernel and initramfs after {last_boot:.1} s; the bound is {CROWD_BOOT_BOUND_S} s"
    );
    ensure!(
        Path::new(&format!("/proc/{dnsmasq}")).exists() && node1.daemon("dnsmasq") == Some(dnsmasq),
        "node1's dnsmasq did not survive {CROWD} clients at once"
    );
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    let boot_bytes: usize = expected[..4].iter().map(|(_, b)| b.len()).sum::<usize>() * CROWD;
    let tftp_bytes = expected[4].1.len() * CROWD;
    let tftp_rate = mib(tftp_bytes) / (tftp_to - tftp_from).max(0.001);
    s.note(&format!(
        "{CROWD} clients: last lease {last_lease:.1} s, last booted {last_boot:.1} s ({:.0} MiB served), all done {all_done:.1} s; {:.0} MiB of kernels by TFTP at once in {:.1} s: {tftp_rate:.1} MiB/s",
        mib(boot_bytes),
        mib(tftp_bytes),
        tftp_to - tftp_from
    ));

    let (json, report) = status_json(&s, &clients[0], &server)?;
    for ip in &leases {
        let ip = ip.to_string();
        let node = report
            .node(&ip)
            .with_context(|| format!("status.json has no row for {ip}:\n{json}"))?;
        ensure!(
            node.pxe.boot_loader && node.pxe.boot_script && node.pxe.kernel && node.pxe.initrd,
            "status.json: {ip} fetched all four boot files, the page says {:?}",
            node.pxe
        );
    }
    drop(crowd);
    node1.stop(&s)?;
    node1.finish(&s)?;
    Ok(vec![
        (format!("{CROWD} PXE clients: last lease"), last_lease),
        (
            format!("{CROWD} PXE clients: last kernel + initramfs"),
            last_boot,
        ),
        (
            format!("{CROWD} kernels at once by TFTP ({tftp_rate:.0} MiB/s)"),
            tftp_to - tftp_from,
        ),
    ])
}

/// Waits for `child` up to `left`: its exit status, or None if it is still
/// running then.
fn wait_with_deadline(
    child: &mut std::process::Child,
    left: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let until = Instant::now() + left;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
