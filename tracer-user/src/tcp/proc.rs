//! TCP sockets of a process before attach.
//!
//! When the tracer attaches to a running process P, the sockets P already holds (and the
//! connections waiting in the accept queues of P's listeners) were created before any probe
//! saw them. This module finds them from `/proc/P/fd`, `/proc/P/ns/net` and a sock_diag dump
//! of P's network namespace ([`super::diag`]; `/proc/P/net/tcp`, [`super::procnet`], when the
//! namespace may not be entered) so the kernel side can adopt them.

use std::collections::HashSet;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tracer_common::tcp::{TCP_CLOSE, TCP_LISTEN, TCP_SYN_RECV, TCP_TIME_WAIT};

use super::{diag, procnet, tuple::Tuple};

/// One socket of P found at attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcSocket {
    pub tuple: Tuple,
    /// Kernel TCP state number (1 = ESTABLISHED ... 12 = NEW_SYN_RECV).
    pub state: u8,
    pub inode: u64,
    /// Whether P holds an fd for it (false: waiting in the accept queue of one of P's listeners).
    pub held: bool,
    /// Bytes in the receive queue (rx_queue), e.g. unread data left in a CLOSE_WAIT socket.
    pub rx_queue: u32,
}

/// P's TCP sockets before attach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcSockets {
    /// Inode of P's network namespace (net->ns.inum).
    pub netns: u32,
    pub sockets: Vec<ProcSocket>,
    /// Local ports P listens on (deduplicated, sorted).
    pub listen_ports: Vec<u16>,
    /// Sockets of the namespace without a file that no listener of P serves, with their
    /// state: among them the client sockets P closed that the kernel is still finishing (no
    /// owner shows), which a resync must not drop.
    pub unowned: Vec<(Tuple, u8)>,
}

/// Kernel TCP state number -> name as `ss` and the kernel spell them in upper case with
/// underscores; anything unknown is "UNKNOWN".
#[must_use]
pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Reads P's sockets: held ones (fd inode matches a socket of P's namespace), and
/// accept-queue ones (inode 0, state not LISTEN/TIME_WAIT/CLOSE, local port and address
/// served by one of P's listeners). TIME_WAIT sockets are never included (no process owns
/// them; the kernel is not even asked for them).
///
/// No IPv6 in the kernel is not an error; a vanished `/proc/P` is (`NotFound`).
pub fn read(pid: u32) -> io::Result<ProcSockets> {
    let base = Path::new("/proc").join(pid.to_string());
    let inodes = socket_inodes(&base.join("fd"))?;
    // Kernels before 3.0 have no /proc/P/ns: one namespace (0), and no sock_diag (3.3) either.
    let (netns, rows) = match std::fs::metadata(base.join("ns/net")) {
        Ok(ns) => {
            let ino = ns.ino();
            let netns = u32::try_from(ino).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("network namespace inode {ino} does not fit in u32"),
                )
            })?;
            let rows = match diag::tcp_sockets(pid)? {
                Some(rows) => rows,
                None => procnet::tcp_sockets(pid)?,
            };
            (netns, rows)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && base.exists() => {
            (0, procnet::tcp_sockets(pid)?)
        }
        Err(e) => return Err(e),
    };

    let (sockets, listen_ports, unowned) = select(&rows, &inodes);
    Ok(ProcSockets {
        netns,
        sockets,
        listen_ports,
        unowned,
    })
}

/// Inodes of the sockets behind the fds in `fd_dir` (`/proc/P/fd`). Entries that vanish
/// during the scan are ignored.
fn socket_inodes(fd_dir: &Path) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(fd_dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let target = match std::fs::read_link(entry.path()) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(inode) = socket_inode(target.as_os_str().as_bytes()) {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    parse_dec(digits)
}

/// Picks P's sockets out of the sockets of its namespace: the held ones and those
/// waiting in the accept queue of a held listener. Returns them with the sorted,
/// deduplicated listening ports, and the fileless sockets no listener of P serves.
///
/// Half-open connections (request sockets, SYN_RECV without a file) are left out: they become
/// sockets of their own, which the kernel reports on the listening port, when the handshake
/// completes, and vanish without a report when it never does.
fn select(
    rows: &[diag::Row],
    inodes: &HashSet<u64>,
) -> (Vec<ProcSocket>, Vec<u16>, Vec<(Tuple, u8)>) {
    let listeners: Vec<&Tuple> = rows
        .iter()
        .filter(|&&(_, state, inode, _)| {
            state == TCP_LISTEN && inode != 0 && inodes.contains(&inode)
        })
        .map(|(tuple, ..)| tuple)
        .collect();
    let mut listen_ports: Vec<u16> = listeners.iter().map(|t| t.sport).collect();
    listen_ports.sort_unstable();
    listen_ports.dedup();

    let mut unowned = Vec::new();
    let mut sockets = Vec::new();
    for &(tuple, state, inode, rx_queue) in rows {
        if state == TCP_TIME_WAIT {
            continue;
        }
        let held = if inode != 0 {
            if !inodes.contains(&inode) {
                continue;
            }
            true
        } else {
            if state == TCP_LISTEN || state == TCP_CLOSE || state == TCP_SYN_RECV {
                continue;
            }
            if !listeners.iter().any(|l| serves(l, &tuple)) {
                unowned.push((tuple, state));
                continue;
            }
            false
        };
        sockets.push(ProcSocket {
            tuple,
            state,
            inode,
            held,
            rx_queue,
        });
    }
    (sockets, listen_ports, unowned)
}

/// Whether a connection with local address `conn` may sit in the accept queue of
/// `listener`: same port, and the listener's address is the wildcard of a compatible family
/// or the connection's local address. An IPv6 listener also serves IPv4 clients: their
/// request sockets (NEW_SYN_RECV) are IPv4 sockets, the accepted children IPv6 ones with
/// v4-mapped addresses.
fn serves(listener: &Tuple, conn: &Tuple) -> bool {
    if listener.sport != conn.sport {
        return false;
    }
    if listener.saddr == [0; 16] {
        return listener.family == 6 || conn.family == 4;
    }
    as_v6(listener.family, &listener.saddr) == as_v6(conn.family, &conn.saddr)
}

/// The address as IPv6 (IPv4 as v4-mapped).
fn as_v6(family: u8, addr: &[u8; 16]) -> [u8; 16] {
    if family == 4 {
        let mut out = [0; 16];
        out[10] = 0xff;
        out[11] = 0xff;
        out[12..].copy_from_slice(&addr[..4]);
        out
    } else {
        *addr
    }
}

/// Decimal digits only, fitting in a u64.
fn parse_dec(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let d = char::from(b).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::process::{Child, Command, Stdio};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    #[test]
    fn state_names() {
        let names = [
            "UNKNOWN",
            "ESTABLISHED",
            "SYN_SENT",
            "SYN_RECV",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
            "CLOSE",
            "CLOSE_WAIT",
            "LAST_ACK",
            "LISTEN",
            "CLOSING",
            "NEW_SYN_RECV",
            "UNKNOWN",
        ];
        for (state, name) in names.iter().enumerate() {
            assert_eq!(state_name(state as u8), *name);
        }
        assert_eq!(state_name(255), "UNKNOWN");
    }

    #[test]
    fn socket_link() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12_345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[1x]"), None);
    }

    fn row(
        family: u8,
        local: ([u8; 16], u16),
        remote: ([u8; 16], u16),
        state: u8,
        inode: u64,
        rx_queue: u32,
    ) -> diag::Row {
        (Tuple::new(family, local, remote), state, inode, rx_queue)
    }

    #[test]
    fn selects_held_and_queued() {
        let lo = v4([127, 0, 0, 1]);
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        let lo6 = Ipv6Addr::LOCALHOST.octets();
        let link: Ipv6Addr = "fe80::5254:ff:fe12:34".parse().unwrap();
        let rows = [
            row(4, (lo, 8080), ([0; 16], 0), TCP_LISTEN, 123_456, 0),
            row(4, (lo, 8080), (lo, 0xD431), 1, 123_457, 42),
            row(4, (lo, 8080), (lo, 0xD432), TCP_TIME_WAIT, 0, 0),
            row(4, (lo, 8080), (lo, 0xD433), 1, 0, 0),
            row(
                4,
                (v4([10, 0, 0, 1]), 22),
                (v4([11, 0, 0, 2]), 50_000),
                8,
                555,
                16,
            ),
            row(6, ([0; 16], 9092), ([0; 16], 0), TCP_LISTEN, 777, 0),
            row(6, (mapped, 9092), (mapped, 0xE1F0), 1, 778, 0),
            row(6, (link.octets(), 9092), (lo6, 0xE1F1), 1, 0, 0),
            // A request socket, as sock_diag reports it.
            row(6, (lo6, 9092), (lo6, 0xE1F2), 3, 0, 0),
            // A client socket closed by its process, finishing in FIN_WAIT2: no file, no
            // listener.
            row(4, (lo, 40_000), (v4([10, 0, 0, 9]), 9092), 5, 0, 0),
        ];
        // Held: the v4 listener on 127.0.0.1:8080, its accepted socket and the v6 listener.
        let inodes: HashSet<u64> = [123_456, 123_457, 777, 778].into_iter().collect();
        let (sockets, ports, unowned) = select(&rows, &inodes);
        assert_eq!(ports, [8080, 9092]);
        let unowned: Vec<u16> = unowned.iter().map(|(t, _)| t.sport).collect();
        assert_eq!(unowned, [40_000], "a fileless socket no listener serves");
        let summary: Vec<(u16, u16, u8, u64, bool)> = sockets
            .iter()
            .map(|s| (s.tuple.sport, s.tuple.dport, s.state, s.inode, s.held))
            .collect();
        assert_eq!(
            summary,
            [
                (8080, 0, TCP_LISTEN, 123_456, true),
                (8080, 0xD431, 1, 123_457, true),
                // TIME_WAIT never; 0xD433 waits in the 8080 listener's queue.
                (8080, 0xD433, 1, 0, false),
                // Port 22: another process's socket (inode 555 not held).
                (9092, 0, TCP_LISTEN, 777, true),
                (9092, 0xE1F0, 1, 778, true),
                (9092, 0xE1F1, 1, 0, false),
                // The request socket (0xE1F2) is half-open: not queued yet.
            ]
        );
        assert_eq!(sockets[1].rx_queue, 42);
    }

    #[test]
    fn queued_must_match_listener_address() {
        let tuple = |family: u8, saddr: [u8; 16], sport: u16| Tuple {
            family,
            saddr,
            sport,
            daddr: [0; 16],
            dport: 0,
        };
        let lo4 = tuple(4, v4([127, 0, 0, 1]), 80);
        let any4 = tuple(4, [0; 16], 80);
        let any6 = tuple(6, [0; 16], 80);
        let lo6 = tuple(6, Ipv6Addr::LOCALHOST.octets(), 80);
        let conn4 = tuple(4, v4([127, 0, 0, 1]), 80);
        let conn4_other = tuple(4, v4([10, 0, 0, 1]), 80);
        let conn4_mapped = tuple(6, Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(), 80);
        let conn6 = tuple(6, Ipv6Addr::LOCALHOST.octets(), 80);
        assert!(serves(&lo4, &conn4));
        assert!(!serves(&lo4, &conn4_other));
        assert!(!serves(&lo4, &tuple(4, v4([127, 0, 0, 1]), 81)));
        assert!(serves(&any4, &conn4_other));
        assert!(!serves(&any4, &conn6));
        assert!(serves(&any6, &conn4));
        assert!(serves(&any6, &conn4_mapped));
        assert!(serves(&any6, &conn6));
        assert!(serves(&lo6, &conn6));
        assert!(!serves(&lo6, &conn4));
        assert!(serves(&tuple(6, conn4_mapped.saddr, 80), &conn4));
    }

    #[test]
    fn missing_process_is_not_found() {
        // PIDs are below 2^22 on Linux (pid_max limit).
        let err = read(u32::MAX - 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        socket_inode(link.as_os_str().as_bytes()).unwrap()
    }

    fn find(found: &ProcSockets, local: SocketAddr, remote: SocketAddr) -> Option<ProcSocket> {
        found
            .sockets
            .iter()
            .find(|s| {
                s.tuple.family == 4
                    && SocketAddr::new(s.tuple.local(), s.tuple.sport) == local
                    && SocketAddr::new(s.tuple.remote(), s.tuple.dport) == remote
            })
            .copied()
    }

    #[test]
    fn live_own_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let laddr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(laddr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let caddr = client.local_addr().unwrap();
        client.write_all(b"hello").unwrap();
        // Left in the accept queue.
        let queued = TcpStream::connect(laddr).unwrap();
        let qaddr = queued.local_addr().unwrap();

        // The server side of `queued` may briefly be a request socket; wait for the child.
        let mut found = read(std::process::id()).unwrap();
        for _ in 0..100 {
            if let Some(s) = find(&found, laddr, qaddr)
                && s.state == 1
                && find(&found, laddr, caddr).is_some_and(|s| s.rx_queue == 5)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = read(std::process::id()).unwrap();
        }

        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(u64::from(found.netns), netns);
        assert!(found.listen_ports.contains(&laddr.port()), "{found:?}");
        assert!(found.listen_ports.is_sorted());

        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let l = find(&found, laddr, any).expect("listener");
        assert_eq!(
            (l.state, l.held, l.inode),
            (TCP_LISTEN, true, inode_of(&listener))
        );

        let a = find(&found, laddr, caddr).expect("accepted");
        assert_eq!((a.state, a.held, a.inode), (1, true, inode_of(&accepted)));
        assert_eq!(a.rx_queue, 5);
        assert_eq!(state_name(a.state), "ESTABLISHED");

        let c = find(&found, caddr, laddr).expect("client");
        assert_eq!((c.state, c.held, c.inode), (1, true, inode_of(&client)));

        let q = find(&found, laddr, qaddr).expect("queued");
        assert_eq!((q.state, q.held, q.inode), (1, false, 0));
        let qc = find(&found, qaddr, laddr).expect("queued client");
        assert_eq!((qc.state, qc.held, qc.inode), (1, true, inode_of(&queued)));

        assert!(found.sockets.iter().all(|s| s.state != TCP_TIME_WAIT));
        drop((listener, accepted, client, queued));
    }

    /// Kills the child when the test ends, failed or not.
    struct Reap(Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn live_other_namespace() {
        let script = "ip link set lo up; exec python3 -c 'import socket,time; \
            s=socket.socket(); s.bind((\"127.0.0.1\",0)); s.listen(); \
            print(s.getsockname()[1], flush=True); time.sleep(30)'";
        let mut child = Reap(
            Command::new("unshare")
                .args(["--net", "sh", "-c", script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("unshare"),
        );
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("port from the child");
        let pid = child.0.id();

        let found = read(pid).unwrap();
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(
            u64::from(found.netns),
            ours,
            "the child has its own namespace"
        );
        assert_eq!(found.listen_ports, [port], "{found:?}");
        let l = found
            .sockets
            .iter()
            .find(|s| s.state == TCP_LISTEN)
            .expect("listener");
        assert_eq!(l.tuple.local().to_string(), "127.0.0.1");
        assert_eq!((l.tuple.sport, l.held), (port, true));
        assert!(
            read(std::process::id())
                .unwrap()
                .sockets
                .iter()
                .all(|s| s.tuple.sport != port || s.state != TCP_LISTEN),
            "the child's listener is not in our namespace"
        );
    }
}
