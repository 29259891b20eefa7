//! A TCP socket's addresses: the key that kernel records, sock_diag dumps and
//! `/proc/P/net/tcp` lines all carry, and what every part of the TCP model matches on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// The socket of `family` from its local and remote (address, port).
    #[must_use]
    pub const fn new(
        family: u8,
        (saddr, sport): ([u8; 16], u16),
        (daddr, dport): ([u8; 16], u16),
    ) -> Self {
        Self {
            family,
            saddr,
            sport,
            daddr,
            dport,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_display() {
        // IPv4 in the first 4 bytes.
        let t = Tuple::new(
            4,
            ([192, 168, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1),
            ([8, 8, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2),
        );
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
}
