//! TCP sockets of a network namespace, from the kernel's sock_diag netlink interface.
//!
//! Reading `/proc/P/net/tcp` walks every socket of the namespace, TIME_WAIT ones included; on
//! a busy broker host those are tens of thousands and no process owns them. A sock_diag dump
//! (`SOCK_DIAG_BY_FAMILY`, `struct inet_diag_req_v2`) is filtered by state in the kernel, so
//! only the states a process's socket can be in are asked for.
//!
//! A netlink socket answers for the network namespace it was created in: for a target in
//! another namespace (a container), the socket is created on a short-lived thread that first
//! joins the target's namespace (`setns` changes only the calling thread's). Joining needs
//! `CAP_SYS_ADMIN`; without it the caller reads the sockets from `/proc/P/net/tcp{,6}`
//! ([`super::procnet`]), which show P's namespace to anyone.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use tracer_common::tcp::{TCP_NEW_SYN_RECV, TCP_TIME_WAIT};

use super::tuple::Tuple;

/// One socket: (addresses, kernel TCP state, inode (0: no file, e.g. still in an accept
/// queue), bytes in the receive queue (for a LISTEN socket, its accept-queue length)).
pub type Row = (Tuple, u8, u64, u32);

/// `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;
/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
/// Bytes of the buffer replies are received into (the kernel fills at most 32 KiB per
/// message batch).
const RECV_BUF: usize = 64 * 1024;

/// States asked for: ESTABLISHED (1) to CLOSING (11) but TIME_WAIT. NEW_SYN_RECV (request
/// sockets) is not asked for, yet the kernel adds it because SYN_RECV is (`tcp_diag_dump`),
/// and reports those as SYN_RECV with inode 0, as /proc/net/tcp did.
pub const STATES: u32 = ((1 << TCP_NEW_SYN_RECV) - 2) & !(1 << TCP_TIME_WAIT);

/// The TCP sockets (IPv4 then IPv6) in the network namespace of process `pid`, in the states
/// of [`STATES`]; `None` when its namespace may not be entered (no `CAP_SYS_ADMIN`) or the
/// kernel has no sock_diag for TCP (before 3.3, or `tcp_diag` not built): /proc/P/net/tcp
/// has them then. A vanished process is `NotFound`.
pub fn tcp_sockets(pid: u32) -> io::Result<Option<Vec<Row>>> {
    let Some(sock) = socket_in(pid)? else {
        return Ok(None);
    };
    let mut buf = vec![0u8; RECV_BUF];
    let mut rows = Vec::new();
    match dump(&sock, libc::AF_INET as u8, 1, &mut buf, &mut rows) {
        Err(e) if no_tcp_diag(&e) => {
            log::debug!("sock_diag for TCP: {e}; reading /proc/{pid}/net/tcp instead");
            return Ok(None);
        }
        other => other?,
    }
    match dump(&sock, libc::AF_INET6 as u8, 2, &mut buf, &mut rows) {
        // No IPv6 in this kernel: no IPv6 sockets either.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::ENOENT)) => {}
        other => other?,
    }
    Ok(Some(rows))
}

/// Whether a failed sock_diag request or socket says the kernel cannot answer for TCP at all:
/// before 3.3 `NETLINK_INET_DIAG` refuses a `SOCK_DIAG_BY_FAMILY` request shorter than its
/// own (`EINVAL`) or of a type it has no handler for (`ENOENT`, as without `tcp_diag`); no
/// `NETLINK_SOCK_DIAG` protocol at all (`EPROTONOSUPPORT`, `EOPNOTSUPP`).
fn no_tcp_diag(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOENT | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT)
    )
}

/// A sock_diag socket in the network namespace of `pid`; `None` when the namespace may not
/// be entered (no `CAP_SYS_ADMIN`) or the kernel has no `NETLINK_SOCK_DIAG`.
fn socket_in(pid: u32) -> io::Result<Option<OwnedFd>> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&path)?;
    let theirs = ns.metadata()?;
    // The calling thread's namespace, where a socket made here would answer for
    // (/proc/thread-self only since 3.17).
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let ours = std::fs::metadata(format!("/proc/self/task/{tid}/ns/net"))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return diag_socket();
    }
    std::thread::Builder::new()
        .name("tracer-netns".into())
        .spawn(move || {
            // SAFETY: setns on a valid namespace fd; it changes this thread's namespace only,
            // and the thread ends right after.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EPERM) {
                    log::debug!("setns({path}): {e}; reading /proc/{pid}/net/tcp instead");
                    return Ok(None);
                }
                return Err(io::Error::new(e.kind(), format!("setns({path}): {e}")));
            }
            diag_socket()
        })?
        .join()
        .map_err(|_| io::Error::other("the network namespace thread panicked"))?
}

/// A sock_diag socket in the calling thread's network namespace; `None` without the protocol.
fn diag_socket() -> io::Result<Option<OwnedFd>> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if no_tcp_diag(&e) {
            return Ok(None);
        }
        if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            // What systemd's RestrictAddressFamilies= and seccomp profiles answer.
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "socket(AF_NETLINK, NETLINK_SOCK_DIAG): {e}: netlink sockets are filtered - allow AF_NETLINK (systemd: add it to RestrictAddressFamilies=, as deploy/systemd/tracer-agent.service does; a container: allow it in its seccomp profile)"
                ),
            ));
        }
        return Err(e);
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Dumps the TCP sockets of `family` (`AF_INET` or `AF_INET6`) into `rows`.
fn dump(
    sock: &OwnedFd,
    family: u8,
    seq: u32,
    buf: &mut [u8],
    rows: &mut Vec<Row>,
) -> io::Result<()> {
    let req = request(family, seq);
    // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: the buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    loop {
        // SAFETY: `buf` is valid for writes of its length. MSG_TRUNC: the datagram's real
        // length is returned, so a truncated one is seen.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        };
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sock_diag reply of {n} bytes truncated to {}", buf.len()),
            ));
        }
        if parse_reply(&buf[..n], seq, rows)? {
            return Ok(());
        }
    }
}

/// A netlink message asking for a dump of the TCP sockets of `family` in [`STATES`]: a
/// `struct nlmsghdr` and a `struct inet_diag_req_v2` (no extensions, no address filter).
fn request(family: u8, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel assigns the port.
    let body = &mut req[NLMSG_HDRLEN..];
    body[0] = family;
    body[1] = libc::IPPROTO_TCP as u8;
    // idiag_ext 0, pad 0.
    body[4..8].copy_from_slice(&STATES.to_ne_bytes());
    // inet_diag_sockid all zero: every address and port.
    req
}

/// Takes the messages of one received datagram: rows are appended, and the result says
/// whether the dump is complete (`NLMSG_DONE`). Messages of another sequence number are
/// skipped; an `NLMSG_ERROR` (or a `NLMSG_DONE` carrying an error) is that error.
fn parse_reply(mut buf: &[u8], seq: u32, rows: &mut Vec<Row>) -> io::Result<bool> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(invalid(&format!(
                "netlink message of {len} bytes in {} bytes",
                buf.len()
            )));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let payload = &buf[NLMSG_HDRLEN..len];
        if u32_at(buf, 8) == seq {
            match kind {
                NLMSG_DONE => {
                    return match payload.get(..4).map(|_| u32_at(payload, 0).cast_signed()) {
                        Some(err) if err < 0 => Err(io::Error::from_raw_os_error(-err)),
                        _ => Ok(true),
                    };
                }
                NLMSG_ERROR => {
                    if payload.len() < 4 {
                        return Err(invalid("short NLMSG_ERROR"));
                    }
                    match u32_at(payload, 0).cast_signed() {
                        // An acknowledgement; not asked for, harmless.
                        0 => {}
                        err => return Err(io::Error::from_raw_os_error(err.saturating_neg())),
                    }
                }
                SOCK_DIAG_BY_FAMILY => rows.extend(parse_msg(payload)?),
                // NLMSG_NOOP and the like.
                _ => {}
            }
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(false)
}

/// One `struct inet_diag_msg` (attributes after it are ignored); `None` for a family other
/// than IPv4 or IPv6.
fn parse_msg(msg: &[u8]) -> io::Result<Option<Row>> {
    if msg.len() < MSG_LEN {
        return Err(invalid(&format!("inet_diag_msg of {} bytes", msg.len())));
    }
    let family = match i32::from(msg[0]) {
        libc::AF_INET => 4,
        libc::AF_INET6 => 6,
        _ => return Ok(None),
    };
    // inet_diag_sockid at 4: sport, dport (big-endian), src[4], dst[4] (network order).
    let addr = |at: usize| {
        let mut out = [0u8; 16];
        let n = if family == 4 { 4 } else { 16 };
        out[..n].copy_from_slice(&msg[at..at + n]);
        out
    };
    let tuple = Tuple::new(
        family,
        (addr(8), u16::from_be_bytes([msg[4], msg[5]])),
        (addr(24), u16::from_be_bytes([msg[6], msg[7]])),
    );
    // After the 48-byte id: expires, rqueue, wqueue, uid, inode.
    let rqueue = u32_at(msg, 56);
    let inode = u32_at(msg, 68);
    Ok(Some((tuple, msg[1], u64::from(inode), rqueue)))
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn header(len: usize, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&4242u32.to_ne_bytes());
        out
    }

    /// An `inet_diag_msg` reply message with `extra` attribute bytes after the struct.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field under test"
    )]
    fn diag_msg(
        seq: u32,
        family: i32,
        state: u8,
        src: [u8; 16],
        sport: u16,
        dst: [u8; 16],
        dport: u16,
        rqueue: u32,
        inode: u32,
        extra: usize,
    ) -> Vec<u8> {
        let mut body = vec![family as u8, state, 0, 0];
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&dport.to_be_bytes());
        body.extend_from_slice(&src);
        body.extend_from_slice(&dst);
        body.extend_from_slice(&7u32.to_ne_bytes()); // if
        body.extend_from_slice(&[0xab; 8]); // cookie
        for field in [1000u32, rqueue, 99, 1000, inode] {
            body.extend_from_slice(&field.to_ne_bytes());
        }
        assert_eq!(body.len(), MSG_LEN);
        body.extend(std::iter::repeat_n(0xee, extra));
        let mut out = header(NLMSG_HDRLEN + body.len(), SOCK_DIAG_BY_FAMILY, 2, seq);
        out.extend_from_slice(&body);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    #[test]
    fn states_mask() {
        assert_eq!(STATES, 0b1111_1011_1110);
        assert_eq!(STATES & 1 << TCP_TIME_WAIT, 0);
        assert_eq!(STATES & 1 << TCP_NEW_SYN_RECV, 0);
        assert_ne!(STATES & 1 << 10, 0, "LISTEN");
        assert_ne!(STATES & 1 << 3, 0, "SYN_RECV");
    }

    #[test]
    fn encodes_request() {
        let req = request(libc::AF_INET6 as u8, 0x0102_0304);
        assert_eq!(req.len(), 72);
        assert_eq!(u32_at(&req, 0), 72);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 20);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
        assert_eq!(u32_at(&req, 8), 0x0102_0304);
        assert_eq!(u32_at(&req, 12), 0);
        assert_eq!(&req[16..20], &[10, 6, 0, 0]);
        assert_eq!(u32_at(&req, 20), STATES);
        assert!(req[24..].iter().all(|&b| b == 0), "no address filter");
        assert_eq!(request(libc::AF_INET as u8, 1)[16], 2);
    }

    #[test]
    fn decodes_two_messages_and_done() {
        let lo6 = Ipv6Addr::LOCALHOST.octets();
        let mapped = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let mut buf = diag_msg(
            5,
            libc::AF_INET,
            10,
            v4([127, 0, 0, 1]),
            8080,
            [0; 16],
            0,
            3,
            123_456,
            0,
        );
        // With attributes after the struct, and an unaligned total length.
        buf.extend(diag_msg(
            5,
            libc::AF_INET6,
            8,
            mapped,
            9092,
            lo6,
            50_000,
            42,
            777,
            5,
        ));
        let mut done = header(NLMSG_HDRLEN + 4, NLMSG_DONE, 2, 5);
        done.extend_from_slice(&0i32.to_ne_bytes());
        buf.extend(done);

        let mut rows = Vec::new();
        assert!(parse_reply(&buf, 5, &mut rows).unwrap());
        assert_eq!(rows.len(), 2);
        let (t, state, inode, rx) = rows[0];
        assert_eq!(
            t,
            Tuple {
                family: 4,
                saddr: v4([127, 0, 0, 1]),
                sport: 8080,
                daddr: [0; 16],
                dport: 0,
            }
        );
        assert_eq!((state, inode, rx), (10, 123_456, 3));
        assert_eq!(t.local().to_string(), "127.0.0.1");
        let (t, state, inode, rx) = rows[1];
        assert_eq!((t.family, t.sport, t.dport), (6, 9092, 50_000));
        assert_eq!(t.local().to_string(), "::ffff:10.1.2.3");
        assert_eq!(t.remote().to_string(), "::1");
        assert_eq!((state, inode, rx), (8, 777, 42));
    }

    #[test]
    fn dump_continues_without_done() {
        let buf = diag_msg(
            1,
            libc::AF_INET,
            1,
            v4([1, 2, 3, 4]),
            1,
            v4([5, 6, 7, 8]),
            2,
            0,
            0,
            0,
        );
        let mut rows = Vec::new();
        assert!(!parse_reply(&buf, 1, &mut rows).unwrap());
        assert_eq!(rows[0].0.remote().to_string(), "5.6.7.8");
        // Another request's messages and other families are skipped.
        let mut other = diag_msg(9, libc::AF_INET, 1, [0; 16], 1, [0; 16], 2, 0, 0, 0);
        other.extend(diag_msg(
            1,
            libc::AF_UNIX,
            1,
            [0; 16],
            1,
            [0; 16],
            2,
            0,
            0,
            0,
        ));
        assert!(!parse_reply(&other, 1, &mut rows).unwrap());
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn decodes_error() {
        let mut buf = header(NLMSG_HDRLEN + 4 + NLMSG_HDRLEN, NLMSG_ERROR, 0, 3);
        buf.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        buf.extend(header(72, SOCK_DIAG_BY_FAMILY, 0x301, 3));
        let err = parse_reply(&buf, 3, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        // No TCP handler: the sockets come from /proc/P/net/tcp instead.
        assert!(no_tcp_diag(&err));

        let mut done = header(NLMSG_HDRLEN + 4, NLMSG_DONE, 2, 3);
        done.extend_from_slice(&(-libc::EINTR).to_ne_bytes());
        let err = parse_reply(&done, 3, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINTR));
        assert!(!no_tcp_diag(&err));
        assert!(!no_tcp_diag(&invalid("short NLMSG_ERROR")));
        // 2.6.32's inet_diag refusing the request's length.
        let mut old = header(NLMSG_HDRLEN + 4 + NLMSG_HDRLEN, NLMSG_ERROR, 0, 3);
        old.extend_from_slice(&(-libc::EINVAL).to_ne_bytes());
        old.extend(header(72, SOCK_DIAG_BY_FAMILY, 0x301, 3));
        assert!(no_tcp_diag(
            &parse_reply(&old, 3, &mut Vec::new()).unwrap_err()
        ));
    }

    #[test]
    fn rejects_malformed() {
        let mut rows = Vec::new();
        let long = header(100, NLMSG_DONE, 0, 1);
        assert!(parse_reply(&long, 1, &mut rows).is_err());
        let short = header(8, NLMSG_DONE, 0, 1);
        assert!(parse_reply(&short, 1, &mut rows).is_err());
        let mut msg = header(NLMSG_HDRLEN + 8, SOCK_DIAG_BY_FAMILY, 2, 1);
        msg.extend_from_slice(&[2; 8]);
        assert!(parse_reply(&msg, 1, &mut rows).is_err());
        assert!(!parse_reply(&[], 1, &mut rows).unwrap());
    }

    #[test]
    fn live_dump_of_own_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rows = tcp_sockets(std::process::id())
            .unwrap()
            .expect("our own namespace is entered without setns");
        assert!(
            rows.iter()
                .any(|(t, state, inode, _)| t.sport == port && *state == 10 && *inode != 0),
            "{rows:?}"
        );
        assert!(rows.iter().all(|r| STATES & 1 << r.1 != 0));
    }
}
