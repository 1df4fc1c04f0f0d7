//! A small HTTP/1.1 server on 127.0.0.1 for the test suite (`cargo test`
//! and `cargo xtask test`): serves bytes the test made, can answer 404, drop
//! the connection mid-body, ignore Range, or never answer; records every
//! request it saw. It listens on loopback only.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub enum Route {
    File {
        body: Vec<u8>,
        /// Answer `Range: bytes=N-` with 206; otherwise always 200 and the whole body.
        ranges: bool,
        /// The first this-many requests send only this many bytes, then close.
        drop_first: usize,
        drop_after: usize,
    },
    NotFound,
    /// Accept, read the request, never answer.
    Silent,
}

impl Route {
    pub fn file(body: &[u8]) -> Route {
        Route::File {
            body: body.to_vec(),
            ranges: true,
            drop_first: 0,
            drop_after: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

pub struct TestServer {
    pub(crate) addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start() -> std::io::Result<TestServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, st) = (routes.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, s) = (r.clone(), s.clone());
                std::thread::spawn(move || serve(conn, &r, &s));
            }
        });
        Ok(TestServer {
            addr,
            routes,
            seen,
            stop,
        })
    }

    pub fn route(&self, path: &str, route: Route) {
        lock(&self.routes).insert(path.to_owned(), route);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// A URL on 127.0.0.1 where nothing listens: connecting is refused.
pub fn refused_url() -> std::io::Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(format!("http://{addr}/nothing-here.tar.gz"))
}

/// A profile's text with every source tarball URL moved to a port on
/// 127.0.0.1 where nothing listens (same file names): its sources can be
/// had only from a pre-download directory or the cache. Refuses a text
/// with no such URL.
pub(crate) fn with_sources_refused(profile: &str) -> anyhow::Result<String> {
    let refused = refused_url()?;
    let dead = refused.trim_end_matches("/nothing-here.tar.gz");
    let mut replaced = 0;
    let lines: Vec<String> = profile
        .lines()
        .map(|line| {
            let url = line.trim().trim_end_matches(',').trim_matches('"');
            if url.starts_with("https://") && url.contains(".tar.") {
                replaced += 1;
                format!(
                    "    \"{dead}/{}\",",
                    url.rsplit('/').next().unwrap_or_default()
                )
            } else {
                line.to_owned()
            }
        })
        .collect();
    // A URL written another way (two on a line, after `urls = [`) would
    // be left reachable: refuse the profile instead.
    let left = lines
        .iter()
        .any(|l| l.contains("https://") && l.contains(".tar."));
    anyhow::ensure!(
        replaced > 0 && !left,
        "the profile's source URLs are not one per line: {replaced} moved, some left"
    );
    Ok(lines.join("\n") + "\n")
}

use crate::interrupt::lock;

fn serve(conn: TcpStream, routes: &Mutex<HashMap<String, Route>>, seen: &Mutex<Vec<Seen>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Ok(read_side) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_side);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            }
        }
    }
    let nth = {
        let mut seen = lock(seen);
        seen.push(Seen {
            path: path.clone(),
            range: range.clone(),
        });
        seen.iter().filter(|s| s.path == path).count()
    };
    let route = lock(routes).get(&path).cloned();
    let mut out = conn;
    match route {
        None | Some(Route::NotFound) => {
            let _ = out.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        Some(Route::Silent) => std::thread::sleep(Duration::from_secs(20)),
        Some(Route::File {
            body,
            ranges,
            drop_first,
            drop_after,
        }) => {
            let start = match (&range, ranges) {
                (Some(r), true) => r
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n < body.len()),
                _ => None,
            };
            let (head, slice) = match start {
                Some(n) => (
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {n}-{}/{}\r\nConnection: close\r\n\r\n",
                        body.len() - n,
                        body.len() - 1,
                        body.len()
                    ),
                    &body[n..],
                ),
                None => (
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
                    &body[..],
                ),
            };
            let _ = out.write_all(head.as_bytes());
            if nth <= drop_first {
                let _ = out.write_all(&slice[..drop_after.min(slice.len())]);
                let _ = out.flush();
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            let _ = out.write_all(slice);
        }
    }
    let _ = out.flush();
}
