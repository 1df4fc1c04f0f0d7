//! The uplink's far side: a service on QEMU's user-mode network, which is
//! node1's uplink, for proving the NAT gateway (`[network] gateway`).
//! QEMU runs [`UplinkService`]'s program for each connection a guest makes
//! to [`SERVICE`] (`guestfwd`, which `restrict=on` lets through: nothing
//! else on this machine or beyond is reachable). The program logs the
//! connection and answers with a token made for this run, so a node that
//! prints the token reached it, and the log says it did. With `gateway =
//! true` a node must reach it through node1; with `false` it must not.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::checks::ssh_command;
use super::milestone::{Milestone, NodesBoot};
use super::timing::{within, CHECKS};
use super::Run;

/// Where the service answers on the uplink (QEMU's user network is
/// 10.0.2.0/24; .2 is its gateway, .3 its DNS server, .15 the guest).
pub(crate) const SERVICE: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 2, 100), 80);

/// The service of one boot test: its program, the log it appends each
/// connection to, and the token it answers with.
pub(super) struct UplinkService {
    pub(super) program: PathBuf,
    log: PathBuf,
    token: String,
}

impl UplinkService {
    /// Writes the program into `dir` (the boot test's), with a new token.
    pub(super) fn write(dir: &Path) -> Result<UplinkService> {
        let mut bytes = [0u8; 12];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
            .context("reading /dev/urandom")?;
        let token = format!("krgiso-uplink-{}", hex::encode(bytes));
        let service = UplinkService {
            program: dir.join("uplink-service"),
            log: dir.join("uplink-service.log"),
            token,
        };
        let program = service.text();
        crate::files::write_atomic(&service.program, program.as_bytes())?;
        std::fs::set_permissions(&service.program, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", service.program.display()))?;
        Ok(service)
    }

    /// The program: the request read if one comes (HTTP: to its empty
    /// line), the connection logged, the token answered as HTTP.
    fn text(&self) -> String {
        let quoted = self.log.display().to_string().replace('\'', r"'\''");
        let body = format!("{}\n", self.token);
        format!(
            "#!/bin/bash\n# krgiso boot test: run by QEMU for each connection to {}:{} on node1's uplink.\nread -r -t 5 request\n# The rest of the request, to its empty line: data left unread would reset the connection.\nwhile read -r -t 5 header && [ -n \"${{header%$'\\r'}}\" ]; do :; done\nprintf '%s %s\\n' \"$(date -u +%FT%TZ)\" \"${{request%$'\\r'}}\" >> '{quoted}'\nprintf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: {}\\r\\n\\r\\n%s' '{body}'\n",
            SERVICE.0,
            SERVICE.1,
            body.len(),
        )
    }

    /// The connections the service answered, one line each.
    fn connections(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The command a node runs to reach the service, with the tools its root
/// has (bash on Debian nodes; busybox on the static userland), then
/// `fetch-rc=` and the exit status.
fn fetch_command(nodes_boot: NodesBoot) -> String {
    let (address, port) = SERVICE;
    let fetch = match nodes_boot {
        NodesBoot::Stock => format!(
            "timeout 20 bash -c \"exec 3<>/dev/tcp/{address}/{port} && echo GET / HTTP/1.0 >&3 && echo >&3 && cat <&3\""
        ),
        _ => format!("timeout 20 wget -q -O - http://{address}:{port}/"),
    };
    format!("'{fetch}; echo fetch-rc=$?'")
}

/// What a node's fetch came to: reached (the token printed, exit 0), or
/// not, with what it said.
fn reached(said: &str, token: &str) -> Result<bool, String> {
    let rc = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("fetch-rc="))
        .map(str::to_owned);
    let printed = said.lines().any(|l| l.trim() == token);
    match (rc.as_deref(), printed) {
        (Some("0"), true) => Ok(true),
        (Some(rc), false) if rc != "0" => Ok(false),
        _ => Err(said.trim().to_owned()),
    }
}

impl Run<'_> {
    /// The NAT gateway as the profile says: the first node, over ssh from
    /// node1, connects to the service on the uplink. With `gateway = true`
    /// it must print the token and the service must log it; with `false`
    /// the attempt must fail and the service see nothing. node1's
    /// forwarding switch is read and must agree.
    pub(super) fn check_gateway(&mut self, leases: &[(String, Ipv4Addr)]) -> Result<()> {
        let (Some(service), Some((name, ip))) = (&self.uplink_service, leases.first()) else {
            return Ok(());
        };
        let (token, before) = (service.token.clone(), service.connections().len());
        let gateway = self.test.network.gateway;
        let until = within(CHECKS, self.deadline);
        let user = self.test.login.0.clone();
        let console = self.log_in_on_node1(until, "to try the uplink from a node")?;
        let forwarding = console.run("cat /proc/sys/net/ipv4/ip_forward", until)?;
        let forwarding = forwarding.lines().any(|l| l.trim() == "1");
        let said = console.run(
            &ssh_command(&user, ip, &fetch_command(self.test.nodes_boot)),
            until,
        )?;
        let _ = console.send("exit\n");
        let connections = self
            .uplink_service
            .as_ref()
            .map_or(0, |s| s.connections().len())
            - before;
        let reached = reached(&said, &token).map_err(|said| {
            anyhow::anyhow!("{name} ({ip}) tried {}:{} on node1's uplink, and its answer is neither the service's token nor a failure: {said:?}", SERVICE.0, SERVICE.1)
        })?;
        let (address, port) = SERVICE;
        let detail = match (gateway, reached, connections, forwarding) {
            (true, true, 1.., true) => format!(
                "gateway = true: {name} reached {address}:{port} on the uplink through node1 (the service logged {connections} connection(s), node1 forwards)"
            ),
            (false, false, 0, false) => format!(
                "gateway = false: {name} could not reach {address}:{port} on the uplink (the service logged nothing, node1 does not forward)"
            ),
            _ => bail!(
                "[network] gateway = {gateway}, yet {name} ({ip}) {} {address}:{port} on node1's uplink (the service logged {connections} connection(s), node1's ip_forward = {}): {said:?}",
                if reached { "reached" } else { "could not reach" },
                u8::from(forwarding)
            ),
        };
        self.record(0, Milestone::Gateway, detail);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn the_service_logs_the_request_and_answers_its_token_as_http() {
        let dir = tempfile::tempdir().unwrap();
        let service = UplinkService::write(dir.path()).unwrap();
        let mut child = Command::new(&service.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            b"GET / HTTP/1.0\r\nHost: 10.0.2.100\r\n\r\n",
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let answer = String::from_utf8(out.stdout).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{answer:?}");
        assert_eq!(body, format!("{}\n", service.token));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let connections = service.connections();
        assert_eq!(connections.len(), 1, "{connections:?}");
        assert!(
            connections[0].ends_with(" GET / HTTP/1.0"),
            "{connections:?}"
        );
        // A second service has another token.
        let other = UplinkService::write(dir.path()).unwrap();
        assert_ne!(other.token, service.token);
    }

    #[test]
    fn a_fetch_counts_only_with_the_token_and_a_zero_status() {
        let t = "krgiso-uplink-00ff";
        assert_eq!(reached(&format!("{t}\r\nfetch-rc=0\r\n"), t), Ok(true));
        assert_eq!(
            reached("wget: can't connect to remote host (10.0.2.100): Network is unreachable\r\nfetch-rc=1\r\n", t),
            Ok(false)
        );
        // A timeout is a failure to reach it.
        assert_eq!(reached("fetch-rc=124\n", t), Ok(false));
        // Exit 0 without the token, or the token with a failure, is neither.
        assert!(reached("fetch-rc=0\n", t).is_err());
        assert!(reached(&format!("{t}\nfetch-rc=1\n"), t).is_err());
        // ssh itself failing says nothing of the uplink.
        assert!(reached(
            "ssh: connect to host 10.77.0.100 port 22: Connection refused\n",
            t
        )
        .is_err());
    }

    #[test]
    fn each_kind_of_node_fetches_with_its_own_tools() {
        let stock = fetch_command(NodesBoot::Stock);
        assert!(stock.contains("/dev/tcp/10.0.2.100/80"), "{stock}");
        assert!(stock.starts_with("'timeout 20 bash -c") && stock.ends_with("; echo fetch-rc=$?'"));
        let busybox = fetch_command(NodesBoot::Kerrighed {
            userland: true,
            session: 1,
            nbmin: 2,
        });
        assert!(
            busybox.contains("wget -q -O - http://10.0.2.100:80/"),
            "{busybox}"
        );
    }
}
