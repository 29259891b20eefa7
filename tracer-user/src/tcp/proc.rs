//! TCP sockets of a process before attach, read from /proc.
//!
//! When the tracer attaches to a running process P, the sockets P already holds (and the
//! connections waiting in the accept queues of P's listeners) were created before any probe
//! saw them. This module reads them from `/proc/P/fd`, `/proc/P/net/tcp{,6}` and
//! `/proc/P/ns/net` so the kernel side can adopt them.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Kernel TCP states used here (include/net/tcp_states.h).
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// A TCP socket's addresses, as the kernel programs report them: ports in host order,
/// addresses as 16 bytes (IPv4 in the first 4, the rest zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// 4 or 6.
    pub family: u8,
    pub saddr: [u8; 16],
    pub sport: u16,
    pub daddr: [u8; 16],
    pub dport: u16,
}

impl Tuple {
    /// The local address (IPv6 stays IPv6 even when v4-mapped, as `ss` prints it:
    /// `::ffff:127.0.0.1`).
    #[must_use]
    pub fn local(&self) -> IpAddr {
        to_ip(self.family, &self.saddr)
    }

    /// The remote address (IPv6 stays IPv6 even when v4-mapped).
    #[must_use]
    pub fn remote(&self) -> IpAddr {
        to_ip(self.family, &self.daddr)
    }
}

fn to_ip(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

/// One socket found in /proc.
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

/// Reads P's sockets: held ones (fd inode matches a row in tcp/tcp6), and accept-queue ones
/// (inode 0, state not LISTEN/TIME_WAIT/CLOSE, local port and address served by one of P's
/// listeners). TIME_WAIT rows are never included (no process owns them).
///
/// A missing `tcp6` table (IPv6 disabled) is not an error; a vanished `/proc/P` is
/// (`NotFound`).
pub fn read(pid: u32) -> io::Result<ProcSockets> {
    let base = Path::new("/proc").join(pid.to_string());
    let netns_ino = std::fs::metadata(base.join("ns/net"))?.ino();
    let netns = u32::try_from(netns_ino).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("network namespace inode {netns_ino} does not fit in u32"),
        )
    })?;
    let inodes = socket_inodes(&base.join("fd"))?;

    let mut rows = parse_table(&std::fs::read(base.join("net/tcp"))?, 4);
    match std::fs::read(base.join("net/tcp6")) {
        Ok(text) => rows.extend(parse_table(&text, 6)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && base.exists() => {}
        Err(e) => return Err(e),
    }

    let (sockets, listen_ports) = select(&rows, &inodes);
    Ok(ProcSockets {
        netns,
        sockets,
        listen_ports,
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

/// Picks P's sockets out of the rows of its namespace's tables: the held ones and those
/// waiting in the accept queue of a held listener. Returns them with the sorted,
/// deduplicated listening ports.
fn select(rows: &[(Tuple, u8, u64, u32)], inodes: &HashSet<u64>) -> (Vec<ProcSocket>, Vec<u16>) {
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

    let sockets = rows
        .iter()
        .filter_map(|&(tuple, state, inode, rx_queue)| {
            if state == TCP_TIME_WAIT {
                return None;
            }
            let held = if inode != 0 {
                if !inodes.contains(&inode) {
                    return None;
                }
                true
            } else {
                if state == TCP_LISTEN
                    || state == TCP_CLOSE
                    || !listeners.iter().any(|l| serves(l, &tuple))
                {
                    return None;
                }
                false
            };
            Some(ProcSocket {
                tuple,
                state,
                inode,
                held,
                rx_queue,
            })
        })
        .collect();
    (sockets, listen_ports)
}

/// Whether a connection with local address `conn` may sit in the accept queue of
/// `listener`: same port, and the listener's address is the wildcard of a compatible family
/// or the connection's local address. An IPv6 listener also serves IPv4 clients: their
/// request sockets (NEW_SYN_RECV) show in `tcp` with IPv4 addresses, the accepted children
/// in `tcp6` as v4-mapped.
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

/// Parses the text of a /proc/net/tcp or tcp6 table into (tuple, state, inode, rx_queue)
/// rows; `family` is 4 or 6 (anything else yields no rows). The header and malformed rows
/// are skipped.
#[must_use]
pub fn parse_table(text: &[u8], family: u8) -> Vec<(Tuple, u8, u64, u32)> {
    if family != 4 && family != 6 {
        return Vec::new();
    }
    text.split(|&b| b == b'\n')
        .filter_map(|line| parse_row(line, family))
        .collect()
}

/// One table row: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
fn parse_row(line: &[u8], family: u8) -> Option<(Tuple, u8, u64, u32)> {
    let mut fields = line
        .split(u8::is_ascii_whitespace)
        .filter(|field| !field.is_empty());
    let sl = fields.next()?.strip_suffix(b":")?;
    parse_dec(sl)?;
    let (saddr, sport) = parse_endpoint(fields.next()?, family)?;
    let (daddr, dport) = parse_endpoint(fields.next()?, family)?;
    let state = fields.next()?;
    if state.len() != 2 {
        return None;
    }
    let state = u8::try_from(parse_hex(state)?).ok()?;
    let (_tx, rx) = split_colon(fields.next()?)?;
    let rx_queue = parse_hex(rx)?;
    // tr:tm->when, retrnsmt, uid, timeout.
    let inode = parse_dec(fields.nth(4)?)?;
    let tuple = Tuple {
        family,
        saddr,
        sport,
        daddr,
        dport,
    };
    Some((tuple, state, inode, rx_queue))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:` port (IPv6) -> (address bytes, host-order port).
/// Each 8-digit group is a native-endian u32 of the corresponding 4 address bytes.
fn parse_endpoint(field: &[u8], family: u8) -> Option<([u8; 16], u16)> {
    let (addr, port) = split_colon(field)?;
    let words = if family == 4 { 1 } else { 4 };
    if addr.len() != 8 * words || port.is_empty() || port.len() > 4 {
        return None;
    }
    let mut out = [0u8; 16];
    for (chunk, dst) in addr.chunks_exact(8).zip(out.chunks_exact_mut(4)) {
        dst.copy_from_slice(&parse_hex(chunk)?.to_ne_bytes());
    }
    let port = u16::try_from(parse_hex(port)?).ok()?;
    Some((out, port))
}

fn split_colon(field: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = field.iter().position(|&b| b == b':')?;
    Some((&field[..colon], &field[colon + 1..]))
}

/// Up to 8 hex digits (either case), nothing else.
fn parse_hex(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &b| {
        let d = char::from(b).to_digit(16)?;
        Some(acc << 4 | d)
    })
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
    use std::fmt::Write as _;
    use std::io::Write as _;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    const V4_TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:0000002A 00:00000000 00000000  1000        0 123457 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D432 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000
   3: 0100007F:1F90 0100007F:D433 01 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1
   4: garbage row
   5: 0100007F:1F90 0100007F:D434 01 00000000:00000000 00:00000000 00000000  1000        0
   6: 0100007G:1F90 0100007F:D435 01 00000000:00000000 00:00000000 00000000  1000        0 999 1
   7: 0A000001:0016 0B000002:C350 08 00000000:00000010 00:00000000 00000000  1000        0 555 1 0000000000000000 20 4 30 10 -1
";

    const V6_TABLE: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2384 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:2384 0000000000000000FFFF00000100007F:E1F0 01 00000000:00000000 00:00000000 00000000  1000        0 778 1 0000000000000000 20 4 30 10 -1
   2: 000080FE00000000FF005452340012FE:2384 00000000000000000000000001000000:E1F1 01 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1
   3: 00000000000000000000000001000000:2384 00000000000000000000000001000000:E1F2 0C 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000
   4: 0000000000000000FFFF00000100007F:2384 0000000000000000FFFF00000100007F 01 00000000:00000000 00:00000000 00000000  1000        0 779 1
";

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    /// The bytes as /proc prints them: each 4-byte group as a native-endian u32.
    fn proc_hex(addr: &[u8]) -> String {
        addr.chunks_exact(4).fold(String::new(), |mut out, c| {
            let word = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            write!(out, "{word:08X}").unwrap();
            out
        })
    }

    #[test]
    fn parses_ipv4_table() {
        let rows = parse_table(V4_TABLE.as_bytes(), 4);
        // Header, rows 4, 5 and 6 are malformed.
        assert_eq!(rows.len(), 5, "{rows:?}");
        let (t, state, inode, rx) = rows[0];
        assert_eq!(
            t,
            Tuple {
                family: 4,
                saddr: proc_v4("0100007F"),
                sport: 8080,
                daddr: [0; 16],
                dport: 0,
            }
        );
        assert_eq!((state, inode, rx), (TCP_LISTEN, 123_456, 0));
        assert_eq!(rows[1].0.dport, 0xD431);
        assert_eq!((rows[1].1, rows[1].2, rows[1].3), (1, 123_457, 42));
        assert_eq!((rows[2].1, rows[2].2), (TCP_TIME_WAIT, 0));
        assert_eq!((rows[3].1, rows[3].2), (1, 0));
        assert_eq!((rows[4].1, rows[4].2, rows[4].3), (8, 555, 16));
        assert_eq!(rows[4].0.sport, 22);
        assert_eq!(rows[4].0.dport, 50_000);
    }

    fn proc_v4(hex: &str) -> [u8; 16] {
        v4(u32::from_str_radix(hex, 16).unwrap().to_ne_bytes())
    }

    #[test]
    fn ipv4_address_respects_endianness() {
        let addr = [127, 0, 0, 1];
        let line = format!(
            "   0: {}:1F90 {}:0050 01 00000000:00000000 00:00000000 00000000 0 0 9 1\n",
            proc_hex(&addr),
            proc_hex(&[10, 1, 2, 3])
        );
        let rows = parse_table(line.as_bytes(), 4);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0.saddr, v4(addr));
        assert_eq!(rows[0].0.daddr, v4([10, 1, 2, 3]));
        assert_eq!(rows[0].0.local().to_string(), "127.0.0.1");
        assert_eq!(rows[0].0.remote().to_string(), "10.1.2.3");
        #[cfg(target_endian = "little")]
        assert_eq!(proc_hex(&addr), "0100007F");
    }

    #[test]
    fn ipv6_address_respects_endianness() {
        let local: Ipv6Addr = "fe80::1234:5678:9abc:def0".parse().unwrap();
        let remote: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let line = format!(
            "   0: {}:1F90 {}:0050 01 00000000:00000000 00:00000000 00000000 0 0 9 1\n",
            proc_hex(&local.octets()),
            proc_hex(&remote.octets())
        );
        let rows = parse_table(line.as_bytes(), 6);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0.local(), IpAddr::V6(local));
        assert_eq!(rows[0].0.remote(), IpAddr::V6(remote));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv6_table() {
        let rows = parse_table(V6_TABLE.as_bytes(), 6);
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(rows[0].0.local().to_string(), "::");
        assert_eq!(
            (rows[0].0.sport, rows[0].1, rows[0].2),
            (9092, TCP_LISTEN, 777)
        );
        let mapped = rows[1].0;
        assert_eq!(mapped.family, 6);
        assert_eq!(mapped.local().to_string(), "::ffff:127.0.0.1");
        assert_eq!(mapped.remote().to_string(), "::ffff:127.0.0.1");
        assert_eq!((mapped.sport, mapped.dport), (9092, 0xE1F0));
        assert_eq!(rows[2].0.local().to_string(), "fe80::5254:ff:fe12:34");
        assert_eq!(rows[2].0.remote().to_string(), "::1");
        assert_eq!((rows[3].1, rows[3].2), (12, 0));
    }

    #[test]
    fn wrong_family_yields_nothing() {
        assert!(parse_table(V4_TABLE.as_bytes(), 6).is_empty());
        assert!(parse_table(V6_TABLE.as_bytes(), 4).is_empty());
        assert!(parse_table(V4_TABLE.as_bytes(), 5).is_empty());
        assert!(parse_table(b"", 4).is_empty());
    }

    #[test]
    fn tuple_display() {
        let t = Tuple {
            family: 4,
            saddr: v4([192, 168, 1, 2]),
            sport: 1,
            daddr: v4([8, 8, 8, 8]),
            dport: 2,
        };
        assert_eq!(t.local().to_string(), "192.168.1.2");
        assert_eq!(t.remote().to_string(), "8.8.8.8");
        let t6 = Tuple {
            family: 6,
            saddr: Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(),
            sport: 1,
            daddr: Ipv6Addr::LOCALHOST.octets(),
            dport: 2,
        };
        assert_eq!(t6.local().to_string(), "::ffff:127.0.0.1");
        assert!(t6.local().is_ipv6());
        assert_eq!(t6.remote().to_string(), "::1");
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

    #[cfg(target_endian = "little")]
    #[test]
    fn selects_held_and_queued() {
        let mut rows = parse_table(V4_TABLE.as_bytes(), 4);
        rows.extend(parse_table(V6_TABLE.as_bytes(), 6));
        // Held: the v4 listener on 127.0.0.1:8080, its accepted socket and the v6 listener.
        let inodes: HashSet<u64> = [123_456, 123_457, 777, 778].into_iter().collect();
        let (sockets, ports) = select(&rows, &inodes);
        assert_eq!(ports, [8080, 9092]);
        let summary: Vec<(u16, u16, u8, u64, bool)> = sockets
            .iter()
            .map(|s| (s.tuple.sport, s.tuple.dport, s.state, s.inode, s.held))
            .collect();
        assert_eq!(
            summary,
            [
                (8080, 0, TCP_LISTEN, 123_456, true),
                (8080, 0xD431, 1, 123_457, true),
                // Row 2 (TIME_WAIT) never; row 3 waits in the 8080 listener's queue.
                (8080, 0xD433, 1, 0, false),
                // Row 7: another process's socket (inode 555 not held).
                (9092, 0, TCP_LISTEN, 777, true),
                (9092, 0xE1F0, 1, 778, true),
                (9092, 0xE1F1, 1, 0, false),
                (9092, 0xE1F2, 12, 0, false),
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
}
