//! Ports as the policy map keys them: a protocol and a *port prefix* `(port, len)`, which
//! covers the ports whose top `len` bits equal `port`'s. A single port is `(p, 16)`, every
//! port of a protocol is `(0, 0)`, and a range (`port`..=`endPort`) is the few aligned blocks
//! that tile it exactly ([`range_prefixes`]: at most 30, usually far fewer). The map is then a
//! longest-prefix-match table, so a lookup costs one LPM probe however many ranges exist.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Ports sharing their top `len` bits with `port` (the low bits of `port` are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortPrefix {
    pub port: u16,
    /// 0 (every port) to 16 (exactly `port`).
    pub len: u8,
}

impl PortPrefix {
    /// Every port.
    pub const ALL: PortPrefix = PortPrefix { port: 0, len: 0 };

    /// Exactly `port`.
    pub fn single(port: u16) -> Self {
        PortPrefix { port, len: 16 }
    }

    /// The prefix of length `len` containing `port` (its low bits cleared).
    pub fn containing(port: u16, len: u8) -> Self {
        PortPrefix {
            port: port & Self::mask(len),
            len,
        }
    }

    fn mask(len: u8) -> u16 {
        if len == 0 {
            0
        } else {
            u16::MAX << (16 - len)
        }
    }

    pub fn first(self) -> u16 {
        self.port
    }

    pub fn last(self) -> u16 {
        self.port | !Self::mask(self.len)
    }

    pub fn contains(self, port: u16) -> bool {
        port & Self::mask(self.len) == self.port
    }
}

impl fmt::Display for PortPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.len {
            0 => f.write_str("*"),
            16 => self.port.fmt(f),
            _ => write!(f, "{}-{}", self.first(), self.last()),
        }
    }
}

/// The fewest aligned prefixes that together cover exactly `first..=last` (empty if
/// `first > last`).
pub fn range_prefixes(first: u16, last: u16) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    let (mut lo, hi) = (first as u32, last as u32);
    while lo <= hi {
        // The largest block starting at `lo` that is aligned and ends by `hi`.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push(PortPrefix {
            port: lo as u16,
            len: 16 - size.trailing_zeros() as u8,
        });
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(range_prefixes(80, 80), vec![PortPrefix::single(80)]);
        assert_eq!(range_prefixes(0, 65535), vec![PortPrefix::ALL]);
        assert_eq!(
            range_prefixes(80, 83),
            vec![PortPrefix { port: 80, len: 14 }]
        );
        // 32000..=32768: 32000-32255, 32256-32767, then 32768 alone.
        assert_eq!(
            range_prefixes(32000, 32768),
            vec![
                PortPrefix {
                    port: 32000,
                    len: 8
                },
                PortPrefix {
                    port: 32256,
                    len: 7
                },
                PortPrefix::single(32768)
            ]
        );
        assert_eq!(PortPrefix { port: 80, len: 14 }.to_string(), "80-83");
        assert!(range_prefixes(9, 8).is_empty());
        // The worst case stays small: 1..=65534.
        assert_eq!(range_prefixes(1, 65534).len(), 30);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The prefixes tile the range exactly: every port of the range in exactly one prefix,
        /// no port outside in any, and each prefix aligned.
        #[test]
        fn tiles_exactly(a in any::<u16>(), b in any::<u16>(), probe in any::<u16>()) {
            let (first, last) = (a.min(b), a.max(b));
            let v = range_prefixes(first, last);
            prop_assert!(v.len() <= 30);
            for p in &v {
                prop_assert_eq!(PortPrefix::containing(p.port, p.len), *p);
            }
            let hits = v.iter().filter(|p| p.contains(probe)).count();
            let inside = (first..=last).contains(&probe);
            prop_assert_eq!(hits, usize::from(inside));
            let total: u32 = v.iter().map(|p| p.last() as u32 - p.first() as u32 + 1).sum();
            prop_assert_eq!(total, last as u32 - first as u32 + 1);
        }
    }
}
