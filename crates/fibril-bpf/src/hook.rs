//! Where fibril's programs run: the attach points, which are also the observation
//! points of events.

use crate::shared;

/// A tc hook fibril attaches a program to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// tc ingress on the host side of a pod veth: packets sent by the pod.
    FromPod,
    /// tc egress on the host side of a pod veth: packets the stack delivers to the pod.
    ToPod,
    /// tc ingress on the node's underlay device: packets from other nodes.
    FromNetdev,
    /// tc ingress on the node's VXLAN device: decapsulated packets from other nodes.
    FromTunnel,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::FromPod,
        Hook::ToPod,
        Hook::FromNetdev,
        Hook::FromTunnel,
    ];

    /// The header's `enum fibril_hook` value.
    pub const fn raw(self) -> u32 {
        match self {
            Hook::FromPod => shared::FIBRIL_HOOK_FROM_POD,
            Hook::ToPod => shared::FIBRIL_HOOK_TO_POD,
            Hook::FromNetdev => shared::FIBRIL_HOOK_FROM_NETDEV,
            Hook::FromTunnel => shared::FIBRIL_HOOK_FROM_TUNNEL,
        }
    }

    pub fn from_raw(raw: u32) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.raw() == raw)
    }

    /// The program fibril attaches at this hook.
    pub const fn program(self) -> &'static str {
        match self {
            Hook::FromPod => shared::PROG_FROM_POD,
            Hook::ToPod => shared::PROG_TO_POD,
            Hook::FromNetdev => shared::PROG_FROM_NETDEV,
            Hook::FromTunnel => shared::PROG_FROM_TUNNEL,
        }
    }

    pub(crate) const fn attach_type(self) -> aya::programs::TcAttachType {
        match self {
            Hook::ToPod => aya::programs::TcAttachType::Egress,
            Hook::FromPod | Hook::FromNetdev | Hook::FromTunnel => {
                aya::programs::TcAttachType::Ingress
            }
        }
    }

    /// A stable lower-case name, for logs, labels and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::FromPod => "from-pod",
            Hook::ToPod => "to-pod",
            Hook::FromNetdev => "from-netdev",
            Hook::FromTunnel => "from-tunnel",
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hook::FromPod => "tc ingress (from pod)",
            Hook::ToPod => "tc egress (to pod)",
            Hook::FromNetdev => "tc ingress (from the underlay)",
            Hook::FromTunnel => "tc ingress (from the tunnel)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip() {
        for h in Hook::ALL {
            assert_eq!(Hook::from_raw(h.raw()), Some(h));
        }
        assert_eq!(Hook::from_raw(0), None);
    }
}
