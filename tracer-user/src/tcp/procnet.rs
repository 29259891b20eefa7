//! TCP sockets of a network namespace from `/proc/P/net/tcp` and `tcp6`: the fallback of
//! [`super::diag`] when the tracer may not enter P's namespace (`setns` needs
//! `CAP_SYS_ADMIN`, which the documented capabilities leave out). Those files show the
//! namespace of P, whoever reads them; they list every socket of it, TIME_WAIT ones included
//! (skipped here), so on a busy host they cost more than a sock_diag dump.
//!
//! Format (`net/ipv4/tcp_ipv4.c` `get_tcp4_sock`, `net/ipv6/tcp_ipv6.c` `get_tcp6_sock`, the
//! same on every kernel since 2.6): `sl local rem st tx_queue:rx_queue tr:tm retrnsmt uid
//! timeout inode ...`, addresses as the raw 32-bit words of the address printed `%08X` in
//! host byte order, ports `%04X`; for a LISTEN socket rx_queue is its accept-queue length, as
//! sock_diag reports it.

use std::io;

use super::diag::{Row, STATES};
use super::tuple::Tuple;

/// The sockets of P's namespace in the states of [`STATES`], IPv4 then IPv6 (a kernel
/// without IPv6 has no `tcp6`).
pub fn tcp_sockets(pid: u32) -> io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (file, family) in [("tcp", 4), ("tcp6", 6)] {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
            Ok(text) => text,
            Err(e) if family == 6 && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines().skip(1) {
            let row = parse_line(line, family).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("/proc/{pid}/net/{file}: unexpected line {line:?}"),
                )
            })?;
            if STATES & (1 << row.1) != 0 {
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

fn parse_line(line: &str, family: u8) -> Option<Row> {
    let mut fields = line.split_whitespace().skip(1);
    let local = endpoint(fields.next()?, family)?;
    let remote = endpoint(fields.next()?, family)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let (_, rx_queue) = fields.next()?.split_once(':')?;
    let rx_queue = u32::from_str_radix(rx_queue, 16).ok()?;
    let inode = fields.nth(4)?.parse().ok()?;
    if state >= 32 {
        return None;
    }
    Some((Tuple::new(family, local, remote), state, inode, rx_queue))
}

/// `0100007F:1F90` -> (127.0.0.1 as 16 bytes, 8080).
fn endpoint(text: &str, family: u8) -> Option<([u8; 16], u16)> {
    let (addr, port) = text.split_once(':')?;
    let words = if family == 4 { 1 } else { 4 };
    if addr.len() != 8 * words {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_exact_mut(4).take(words).enumerate() {
        let word = u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok()?;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Some((bytes, u16::from_str_radix(port, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, TcpListener, TcpStream};

    use super::*;

    #[test]
    fn parses_both_families() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        let (tuple, state, inode, rx_queue) = parse_line(v4, 4).expect("v4");
        assert_eq!(&tuple.saddr[..4], &[127, 0, 0, 1]);
        assert_eq!(
            (tuple.sport, tuple.dport, state, inode, rx_queue),
            (8080, 0, 10, 123_456, 3)
        );
        let v6 = "   1: 0000000000000000FFFF00000100007F:2384 0000000000000000FFFF00000100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 20 4 30 10 -1";
        let (tuple, state, inode, _) = parse_line(v6, 6).expect("v6");
        assert_eq!(
            tuple.local(),
            "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            (tuple.sport, tuple.dport, state, inode),
            (9092, 54000, 1, 99)
        );
        assert!(parse_line("   2: 0100007F 00000000:0000 0A", 4).is_none());
        assert!(parse_line(v6, 4).is_none(), "a v6 address in tcp");
    }

    #[test]
    fn reads_the_same_sockets_as_sock_diag() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let pid = std::process::id();
        let key = |rows: Vec<Row>| {
            let mut rows: Vec<Row> = rows
                .into_iter()
                .filter(|(t, ..)| {
                    [listener.local_addr(), client.local_addr()]
                        .iter()
                        .any(|a| a.as_ref().is_ok_and(|a| t.sport == a.port()))
                })
                .collect();
            rows.sort_by_key(|&(t, state, inode, _)| (t.sport, t.dport, state, inode));
            rows
        };
        let from_proc = key(tcp_sockets(pid).unwrap());
        assert_eq!(
            from_proc.len(),
            3,
            "listener, client, server: {from_proc:?}"
        );
        assert_eq!(
            from_proc,
            key(super::super::diag::tcp_sockets(pid)
                .unwrap()
                .expect("our own namespace is entered without setns"))
        );
        drop(server);
    }
}
