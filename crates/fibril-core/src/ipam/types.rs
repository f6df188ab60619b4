//! Newtypes for the ranges and names IPAM handles, so that a node's pod block can never be
//! passed where the service range or a whole pool is expected (linkerd's `ClientAddr` /
//! `OrigDstAddr` idea).
//!
//! Every CIDR newtype holds a network address (no host bits set) and serializes exactly as
//! [`IpNet`] does (`"10.244.1.0/24"`).

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Why a string or [`IpNet`] is not an acceptable CIDR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not of the form `address/prefix`.
    #[error(
        "{value:?} is not a CIDR (expected an address and a prefix length, e.g. 10.244.0.0/16)"
    )]
    Syntax {
        /// The text as given.
        value: String,
    },
    /// The address has bits set below the prefix, so it is ambiguous which range was meant.
    #[error("{value} has host bits set: did you mean {network}?")]
    HostBits {
        /// The CIDR as given.
        value: IpNet,
        /// The network the prefix selects.
        network: IpNet,
    },
}

/// Parses `address/prefix`, refusing a bare address and host bits.
pub fn parse_cidr(text: &str) -> Result<IpNet, CidrError> {
    let net: IpNet = text.trim().parse().map_err(|_| CidrError::Syntax {
        value: text.to_string(),
    })?;
    check_network(net)
}

fn check_network(net: IpNet) -> Result<IpNet, CidrError> {
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            value: net,
            network: net.trunc(),
        });
    }
    Ok(net)
}

macro_rules! cidr_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "IpNet", into = "IpNet")]
        pub struct $name(IpNet);

        impl $name {
            /// Wraps `net`, refusing host bits.
            pub fn new(net: IpNet) -> Result<Self, CidrError> {
                check_network(net).map(Self)
            }

            /// The range as a plain [`IpNet`].
            pub fn net(&self) -> IpNet {
                self.0
            }
        }

        impl TryFrom<IpNet> for $name {
            type Error = CidrError;
            fn try_from(net: IpNet) -> Result<Self, CidrError> {
                Self::new(net)
            }
        }

        impl From<$name> for IpNet {
            fn from(c: $name) -> IpNet {
                c.0
            }
        }

        impl FromStr for $name {
            type Err = CidrError;
            fn from_str(s: &str) -> Result<Self, CidrError> {
                parse_cidr(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

cidr_newtype!(
    /// One node's pod range: a block claimed from the cluster pool, or `node.spec.podCIDR`.
    PodCidr
);
cidr_newtype!(
    /// One range of the cluster pool (`ipam.clusterPoolCidrs[i]`), which node blocks are cut from.
    PoolCidr
);
cidr_newtype!(
    /// The cluster's Service range (kube-apiserver `--service-cluster-ip-range`).
    ServiceCidr
);
cidr_newtype!(
    /// The range that is routable without masquerading in native routing mode: pod traffic
    /// to anything outside it is SNATed to the node.
    NativeRoutingCidr
);

/// Why a node name is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    /// Which kind of name (`node name`).
    pub what: &'static str,
    /// The name as given.
    pub value: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

/// A Kubernetes node name: an RFC 1123 DNS subdomain, as the API server requires.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// The longest node name the API server accepts.
    pub const MAX_LEN: usize = 253;

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let err = |reason| NameError {
            what: "node name",
            value: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(err("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(err("must be at most 253 characters"));
        }
        for label in s.split('.') {
            let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
            if label.is_empty() || label.len() > 63 {
                return Err(err("each dot-separated part must have 1 to 63 characters"));
            }
            if !label.chars().all(|c| alnum(c) || c == '-') {
                return Err(err(
                    "may contain only lowercase letters, digits, '-' and '.'",
                ));
            }
            if !label.starts_with(alnum) || !label.ends_with(alnum) {
                return Err(err(
                    "each dot-separated part must start and end with a letter or digit",
                ));
            }
        }
        Ok(NodeName(s.to_string()))
    }
}

macro_rules! string_newtype_impls {
    ($($name:ident),*) => {$(
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

string_newtype_impls!(NodeName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_newtypes_refuse_host_bits_and_bare_addresses() {
        assert!("10.244.0.0/16".parse::<PodCidr>().is_ok());
        let e = "10.0.0.1/8".parse::<PoolCidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?"
        );
        assert!(matches!(
            "10.0.0.1".parse::<ServiceCidr>(),
            Err(CidrError::Syntax { .. })
        ));
        assert!("fd00::/108".parse::<ServiceCidr>().is_ok());
    }

    #[test]
    fn cidr_newtypes_serialize_as_ipnet() {
        let c: PodCidr = "10.244.1.0/24".parse().unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"10.244.1.0/24\"");
        let back: PodCidr = serde_json::from_str("\"10.244.1.0/24\"").unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<PodCidr>("\"10.244.1.7/24\"").is_err());
    }

    #[test]
    fn node_names_follow_rfc1123() {
        for ok in ["fibril-node-1", "a", "node.example.com", "0abc"] {
            assert!(ok.parse::<NodeName>().is_ok(), "{ok}");
        }
        for bad in ["", "Node", "-a", "a-", "a..b", "a_b", &"x".repeat(254)] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<NodeName>("\"UPPER\"").is_err());
    }
}
