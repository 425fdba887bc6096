//! Sets of client addresses, the form of `PGWS_TRUSTED_PROXIES` and
//! `PGWS_RATE_CONNECTIONS_EXEMPT`: a comma-separated list of IP addresses, CIDR ranges
//! (`10.0.0.0/8`, `fd00::/8`) and the word `private`; `none` is the empty set.
//!
//! `private` stands for the addresses that never come straight from the public internet:
//! loopback (`127.0.0.0/8`, `::1`), the private ranges (`10.0.0.0/8`, `172.16.0.0/12`,
//! `192.168.0.0/16`, `fc00::/7`), link-local (`169.254.0.0/16`, `fe80::/10`) and the shared
//! address space of carrier-grade NAT (`100.64.0.0/10`). Such a peer is a proxy, a load balancer,
//! a NAT, or a client on the same network. IPv4 addresses seen through a dual-stack socket
//! (`::ffff:a.b.c.d`) are matched as IPv4.

use std::net::IpAddr;

/// Why an address setting does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Neither an address, a range nor a keyword.
    #[error("'{0}' is not an IP address, a CIDR range (10.0.0.0/8) or 'private'")]
    Item(String),
    /// A prefix length longer than the address.
    #[error("'{0}': the prefix length is longer than the address")]
    Prefix(String),
    /// `none` next to other items.
    #[error("'none' cannot be combined with other items")]
    NoneWithOthers,
}

/// An address and a prefix length: the addresses whose first `prefix` bits are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// `addr/prefix`; host bits are ignored.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: matched as IPv4, like the addresses.
        Some(match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Self {
                    net: IpAddr::V4(v4),
                    prefix: prefix - 96,
                },
                None => Self { net: addr, prefix },
            },
            _ => Self { net: addr, prefix },
        })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn same_prefix(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    let shift = bits - u32::from(prefix);
    shift >= bits || (a >> shift) == (b >> shift)
}

impl std::str::FromStr for IpRange {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| AddressError::Item(s.into()))?;
        let prefix = match prefix {
            Some(p) => p.parse().map_err(|_| AddressError::Item(s.into()))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, prefix).ok_or_else(|| AddressError::Prefix(s.into()))
    }
}

/// Whether `ip` is loopback, private, link-local or carrier-grade NAT (see the module).
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A set of addresses: ranges, and (`private`) every private address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet {
    private: bool,
    ranges: Vec<IpRange>,
}

impl AddressSet {
    /// The empty set.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every private address (see the module).
    pub fn private() -> Self {
        Self {
            private: true,
            ranges: Vec::new(),
        }
    }

    /// Parses a comma-separated list; empty items are skipped.
    pub fn parse(value: &str) -> Result<Self, AddressError> {
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut set = Self::none();
        for item in &items {
            if item.eq_ignore_ascii_case("none") {
                if items.len() > 1 {
                    return Err(AddressError::NoneWithOthers);
                }
            } else if item.eq_ignore_ascii_case("private") {
                set.private = true;
            } else {
                set.ranges.push(item.parse()?);
            }
        }
        Ok(set)
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        (self.private && is_private(ip)) || self.ranges.iter().any(|r| r.contains(ip))
    }

    /// Whether nothing is in the set.
    pub fn is_empty(&self) -> bool {
        !self.private && self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_addresses() {
        for p in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "::1",
            "fd12::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in [
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "2001:db8::1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private(ip(p)), "{p}");
        }
    }

    #[test]
    fn ranges() {
        let r: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(r.contains(ip("10.255.0.1")) && !r.contains(ip("11.0.0.1")));
        assert!(r.contains(ip("::ffff:10.0.0.1")));
        assert!(!r.contains(ip("::1")));
        let one: IpRange = "203.0.113.7".parse().unwrap();
        assert!(one.contains(ip("203.0.113.7")) && !one.contains(ip("203.0.113.8")));
        let mapped: IpRange = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.9.9.9")) && !mapped.contains(ip("11.0.0.1")));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6: IpRange = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert_eq!(
            "10.0.0.0/33".parse::<IpRange>(),
            Err(AddressError::Prefix("10.0.0.0/33".into()))
        );
        assert!("10.0.0/8".parse::<IpRange>().is_err());
        assert!("10.0.0.0/x".parse::<IpRange>().is_err());
    }

    #[test]
    fn sets() {
        let s = AddressSet::parse("private, 203.0.113.0/24").unwrap();
        assert!(s.contains(ip("10.0.0.1")) && s.contains(ip("203.0.113.9")));
        assert!(!s.contains(ip("8.8.8.8")));
        let none = AddressSet::parse("none").unwrap();
        assert!(none.is_empty() && !none.contains(ip("127.0.0.1")));
        assert_eq!(AddressSet::parse("").unwrap(), AddressSet::none());
        assert_eq!(AddressSet::parse("PRIVATE").unwrap(), AddressSet::private());
        assert_eq!(
            AddressSet::parse("none,10.0.0.1"),
            Err(AddressError::NoneWithOthers)
        );
        assert!(matches!(
            AddressSet::parse("localhost"),
            Err(AddressError::Item(_))
        ));
    }
}
