//! Datapath events: what the programs forwarded, passed to the stack, or dropped, and
//! why, read from the pinned ring buffer.
//!
//! Drops always emit an event (and count in the drop counters, which survive a lost
//! event). Forwarded and passed packets emit one only when the datapath was loaded with
//! [`DatapathConfig::trace_sample`](crate::DatapathConfig::trace_sample).
//!
//! A ring buffer has one consumer position: two readers of the same pin dir take events
//! from each other. Run one reader per node (the agent), and fan out from there.
//!
//! [`EventReader`] is a plain fd-backed reader: block on it with [`EventReader::wait`],
//! or register it with an event loop, e.g. tokio's `AsyncFd`:
//!
//! ```text
//! // SAFETY: the reader owns its fd and always returns the same one.
//! let mut fd = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }?;
//! loop {
//!     let mut guard = fd.readable_mut().await?;
//!     while let Some(event) = guard.get_inner_mut().next_event() { ... }
//!     guard.clear_ready();
//! }
//! ```
//!
//! (`tests/datapath.rs` runs exactly this.)

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Map, MapData, RingBuf};

use crate::error::BpfError;
use crate::hook::Hook;
use crate::maps::Identity;
use crate::shared::{self, fibril_event};

/// Declares a Rust enum over one of the header's C enums: variants, their C constants,
/// stable names and descriptions, and the conversions. The values come from the header;
/// the tests check that every C value has a variant.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $name:ident, max = $max:path, {
            $( $(#[$vmeta:meta])* $variant:ident = $raw:path, $label:literal, $desc:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// One past the largest C value (the header's `__..._MAX`).
            #[cfg(test)]
            pub(crate) const RAW_MAX: u32 = $max;

            /// The header's value.
            pub const fn raw(self) -> u32 {
                match self {
                    $( $name::$variant => $raw, )+
                }
            }

            pub fn from_raw(raw: u32) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.raw() == raw)
            }

            /// A stable snake_case name, for metrics labels, logs and JSON.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )+
                }
            }

            /// What it means, in a sentence fragment.
            pub const fn description(self) -> &'static str {
                match self {
                    $( $name::$variant => $desc, )+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} ({})", self.as_str(), self.description())
            }
        }
    };
}

code_enum! {
    /// Why the datapath dropped a packet (`enum fibril_drop_reason`).
    DropReason, max = shared::__FIBRIL_DROP_MAX, {
        Malformed = shared::FIBRIL_DROP_MALFORMED, "malformed",
            "IPv4 header truncated or invalid";
        TtlExceeded = shared::FIBRIL_DROP_TTL_EXCEEDED, "ttl_exceeded",
            "TTL expired at a hop fibril routes";
        NoEndpoint = shared::FIBRIL_DROP_NO_ENDPOINT, "no_endpoint",
            "destination in this node's pod range but no such endpoint";
        FibBlackhole = shared::FIBRIL_DROP_FIB_BLACKHOLE, "fib_blackhole",
            "the node's route to the destination is a blackhole";
        FibUnreachable = shared::FIBRIL_DROP_FIB_UNREACHABLE, "fib_unreachable",
            "the node has no route to the destination, or an unreachable one";
        FibProhibit = shared::FIBRIL_DROP_FIB_PROHIBIT, "fib_prohibit",
            "the node's route to the destination is prohibit";
        FibForwardingDisabled = shared::FIBRIL_DROP_FIB_FWD_DISABLED, "fib_forwarding_disabled",
            "IPv4 forwarding is disabled on the ingress device";
        FibUnsupportedLwt = shared::FIBRIL_DROP_FIB_UNSUPP_LWT, "fib_unsupported_lwt",
            "the route needs a lightweight-tunnel encapsulation";
        FibError = shared::FIBRIL_DROP_FIB_ERROR, "fib_error",
            "the FIB lookup failed";
        TunnelKey = shared::FIBRIL_DROP_TUNNEL_KEY, "tunnel_key",
            "setting the tunnel key failed";
        Rewrite = shared::FIBRIL_DROP_REWRITE, "rewrite",
            "rewriting the packet's headers failed";
        Redirect = shared::FIBRIL_DROP_REDIRECT, "redirect",
            "the redirect helper refused";
        SvcNoBackend = shared::FIBRIL_DROP_SVC_NO_BACKEND, "svc_no_backend",
            "the service has no backend: answered with a TCP RST or ICMP port unreachable";
        SvcBackendGone = shared::FIBRIL_DROP_SVC_BACKEND_GONE, "svc_backend_gone",
            "the service's backends were replaced while the packet was in flight";
        NatNoPort = shared::FIBRIL_DROP_NAT_NO_PORT, "nat_no_port",
            "no free source port for a masqueraded service connection";
        CtCreate = shared::FIBRIL_DROP_CT_CREATE, "ct_create",
            "the conntrack entry of a new service connection could not be written";
        PolicyDenied = shared::FIBRIL_DROP_POLICY_DENIED, "policy_denied",
            "policy denied: no NetworkPolicy allows this new connection of an isolated endpoint";
    }
}

code_enum! {
    /// How the datapath forwarded a packet (`enum fibril_fwd_path`).
    ForwardPath, max = shared::__FIBRIL_FWD_MAX, {
        Local = shared::FIBRIL_FWD_LOCAL, "local",
            "bpf_redirect_peer into a pod of this node";
        Native = shared::FIBRIL_FWD_NATIVE, "native",
            "FIB next hop with a known neighbour, bpf_redirect";
        NativeNeigh = shared::FIBRIL_FWD_NATIVE_NEIGH, "native_neigh",
            "FIB next hop, neighbour resolved by bpf_redirect_neigh";
        Tunnel = shared::FIBRIL_FWD_TUNNEL, "tunnel",
            "encapsulated by the VXLAN device";
    }
}

code_enum! {
    /// Why the datapath handed a packet to the node's stack (`enum fibril_pass_reason`).
    PassReason, max = shared::__FIBRIL_PASS_MAX, {
        NotIpv4 = shared::FIBRIL_PASS_NOT_IPV4, "not_ipv4",
            "not IPv4 (ARP, IPv6, ...)";
        ToHost = shared::FIBRIL_PASS_TO_HOST, "to_host",
            "to an address of the node itself";
        UnknownDst = shared::FIBRIL_PASS_UNKNOWN_DST, "unknown_dst",
            "not to a pod fibril forwards to";
        NoTunnelEndpoint = shared::FIBRIL_PASS_NO_TUNNEL_ENDPOINT, "no_tunnel_endpoint",
            "the ipcache entry has no tunnel endpoint";
        FibNotForwarded = shared::FIBRIL_PASS_FIB_NOT_FWDED, "fib_not_forwarded",
            "the FIB says the destination is local";
        FibFragNeeded = shared::FIBRIL_PASS_FIB_FRAG_NEEDED, "fib_frag_needed",
            "larger than the egress MTU: the stack fragments or answers ICMP";
    }
}

/// The datapath's verdict on a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Redirected by the datapath (`TC_ACT_REDIRECT`).
    Forwarded(ForwardPath),
    /// Handed to the node's stack unchanged (`TC_ACT_OK`).
    Passed(PassReason),
    /// Dropped (`TC_ACT_SHOT`); or, for [`DropReason::SvcNoBackend`], consumed and
    /// answered with a TCP RST or ICMP port unreachable.
    Dropped(DropReason),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Forwarded(p) => write!(f, "forwarded: {p}"),
            Verdict::Passed(r) => write!(f, "passed: {r}"),
            Verdict::Dropped(r) => write!(f, "dropped: {r}"),
        }
    }
}

/// One packet's event (`struct fibril_event`), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC, nanoseconds.
    pub timestamp_ns: u64,
    pub hook: Hook,
    pub verdict: Verdict,
    /// The device the program ran on (in the node's netns).
    pub ifindex: u32,
    /// Where the packet was redirected (or was to be, for a drop after the decision).
    pub out_ifindex: Option<u32>,
    /// The remote node, for cross-node traffic.
    pub tunnel_endpoint: Option<Ipv4Addr>,
    /// EtherType.
    pub eth_proto: u16,
    /// IP protocol; 0 if not IPv4.
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// TCP/UDP ports (0 otherwise, and for later fragments).
    pub src_port: u16,
    pub dst_port: u16,
    pub src_identity: Identity,
    pub dst_identity: Identity,
    /// skb->len: the frame's length including the Ethernet header.
    pub len: u32,
    /// [`DropReason::PolicyDenied`]: where the policy denied, and the revision of the
    /// endpoint's policy that did.
    pub policy: Option<PolicyVerdict>,
}

/// The direction of an endpoint's policy.
pub use fibril_core::policy::Direction as PolicyDirection;

/// What a policy drop event says about the policy that denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyVerdict {
    pub direction: PolicyDirection,
    /// The endpoint's policy revision (low 32 bits).
    pub revision: u32,
}

impl Event {
    /// Decodes one ring buffer record; `path` names the ring buffer in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Event, BpfError> {
        let size = std::mem::size_of::<fibril_event>();
        if bytes.len() != size {
            return Err(BpfError::EventSize {
                path: path.to_path_buf(),
                expected: size,
                found: bytes.len(),
            });
        }
        // SAFETY: `bytes` holds exactly one `fibril_event`, a repr(C) struct of integers
        // for which every bit pattern is valid; read_unaligned copes with any alignment.
        let raw: fibril_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let unknown = |field: &'static str, value: u32| BpfError::UnknownEventCode {
            path: path.to_path_buf(),
            field,
            value,
        };
        let reason = u32::from(raw.reason);
        let verdict = match u32::from(raw.type_) {
            shared::FIBRIL_EVENT_DROPPED => Verdict::Dropped(
                DropReason::from_raw(reason).ok_or_else(|| unknown("drop reason", reason))?,
            ),
            shared::FIBRIL_EVENT_FORWARDED => Verdict::Forwarded(
                ForwardPath::from_raw(reason).ok_or_else(|| unknown("forward path", reason))?,
            ),
            shared::FIBRIL_EVENT_PASSED => Verdict::Passed(
                PassReason::from_raw(reason).ok_or_else(|| unknown("pass reason", reason))?,
            ),
            other => return Err(unknown("event type", other)),
        };
        let hook =
            Hook::from_raw(u32::from(raw.hook)).ok_or_else(|| unknown("hook", raw.hook.into()))?;
        let ip = |be: u32| Ipv4Addr::from(u32::from_be(be));
        let policy = match u32::from(raw.policy_dir) {
            0 => None,
            shared::FIBRIL_POLICY_INGRESS => Some(PolicyDirection::Ingress),
            shared::FIBRIL_POLICY_EGRESS => Some(PolicyDirection::Egress),
            other => return Err(unknown("policy direction", other)),
        }
        .map(|direction| PolicyVerdict {
            direction,
            revision: raw.policy_revision,
        });
        Ok(Event {
            timestamp_ns: raw.timestamp_ns,
            hook,
            verdict,
            ifindex: raw.ifindex,
            out_ifindex: (raw.out_ifindex != 0).then_some(raw.out_ifindex),
            tunnel_endpoint: (raw.tunnel_endpoint != 0).then(|| ip(raw.tunnel_endpoint)),
            eth_proto: u16::from_be(raw.eth_proto),
            proto: raw.proto,
            src: ip(raw.src_ipv4),
            dst: ip(raw.dst_ipv4),
            src_port: u16::from_be(raw.src_port),
            dst_port: u16::from_be(raw.dst_port),
            src_identity: Identity(raw.src_identity),
            dst_identity: Identity(raw.dst_identity),
            len: raw.len,
            policy,
        })
    }
}

/// A reader of the pinned events ring buffer of one node.
pub struct EventReader {
    ring: RingBuf<MapData>,
    path: PathBuf,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("path", &self.path)
            .finish()
    }
}

impl EventReader {
    /// Opens `<pin_dir>/fibril_events`; no program needs to be loaded by this process.
    pub fn open(pin_dir: &Path) -> Result<Self, BpfError> {
        let path = pin_dir.join(shared::MAP_EVENTS);
        let map_err = |source| BpfError::Map {
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(map_err)?;
        let map = Map::from_map_data(data).map_err(map_err)?;
        let ring = RingBuf::try_from(map).map_err(map_err)?;
        Ok(EventReader { ring, path })
    }

    /// The next event, if one is available now.
    pub fn next_event(&mut self) -> Option<Result<Event, BpfError>> {
        let item = self.ring.next()?;
        Some(Event::decode(&item, &self.path))
    }

    /// Every event available now. A record that does not decode ends the batch with its
    /// error (the records before it are lost with it: the reader is too old).
    pub fn drain(&mut self) -> Result<Vec<Event>, BpfError> {
        let mut out = Vec::new();
        while let Some(ev) = self.next_event() {
            out.push(ev?);
        }
        Ok(out)
    }

    /// Blocks until an event is available or `timeout` passes (`None`: forever).
    /// Returns whether one is available.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, BpfError> {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
        });
        loop {
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc >= 0 {
                return Ok(rc > 0);
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(BpfError::Io {
                    op: "polling",
                    path: self.path.clone(),
                    source: err,
                });
            }
        }
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// The ring buffer's fd: the same one for the reader's whole life (as tokio's
/// `AsyncFd::register` requires), readable when events are pending.
impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of each C enum has a Rust variant, and back: adding a reason in the
    /// header without adding it here fails this test.
    #[test]
    fn every_c_code_has_a_variant() {
        fn check<T: Copy + std::fmt::Debug + PartialEq>(
            all: &[T],
            max: u32,
            raw: impl Fn(T) -> u32,
            from_raw: impl Fn(u32) -> Option<T>,
        ) {
            assert_eq!(all.len() as u32, max - 1, "{all:?}");
            for v in 1..max {
                let variant = from_raw(v).unwrap_or_else(|| panic!("no variant for {v}"));
                assert_eq!(raw(variant), v);
            }
            assert_eq!(from_raw(0), None);
            assert_eq!(from_raw(max), None);
        }
        check(
            DropReason::ALL,
            DropReason::RAW_MAX,
            DropReason::raw,
            DropReason::from_raw,
        );
        check(
            ForwardPath::ALL,
            ForwardPath::RAW_MAX,
            ForwardPath::raw,
            ForwardPath::from_raw,
        );
        check(
            PassReason::ALL,
            PassReason::RAW_MAX,
            PassReason::raw,
            PassReason::from_raw,
        );
    }

    #[test]
    fn labels_are_unique_snake_case() {
        let labels: Vec<&str> = DropReason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(ForwardPath::ALL.iter().map(|p| p.as_str()))
            .chain(PassReason::ALL.iter().map(|p| p.as_str()))
            .collect();
        for l in &labels {
            assert!(
                l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{l}"
            );
        }
        let mut drops: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        drops.sort_unstable();
        drops.dedup();
        assert_eq!(drops.len(), DropReason::ALL.len());
    }

    fn raw_event() -> fibril_event {
        fibril_event {
            timestamp_ns: 42,
            src_ipv4: u32::from(Ipv4Addr::new(10, 0, 1, 2)).to_be(),
            dst_ipv4: u32::from(Ipv4Addr::new(10, 0, 2, 3)).to_be(),
            src_identity: 7,
            dst_identity: 9,
            ifindex: 4,
            out_ifindex: 0,
            tunnel_endpoint: u32::from(Ipv4Addr::new(192, 168, 0, 2)).to_be(),
            len: 98,
            src_port: 40000_u16.to_be(),
            dst_port: 53_u16.to_be(),
            eth_proto: 0x0800_u16.to_be(),
            type_: shared::FIBRIL_EVENT_DROPPED as u8,
            reason: shared::FIBRIL_DROP_TTL_EXCEEDED as u8,
            hook: shared::FIBRIL_HOOK_FROM_POD as u8,
            proto: 17,
            policy_dir: 0,
            pad: 0,
            policy_revision: 0,
        }
    }

    fn bytes_of(ev: &fibril_event) -> Vec<u8> {
        // SAFETY: fibril_event is repr(C) plain data without implicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const fibril_event).cast::<u8>(),
                std::mem::size_of::<fibril_event>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_network_order_fields() {
        let ev = Event::decode(&bytes_of(&raw_event()), Path::new("x")).unwrap();
        assert_eq!(ev.verdict, Verdict::Dropped(DropReason::TtlExceeded));
        assert_eq!(ev.hook, Hook::FromPod);
        assert_eq!(ev.src, Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(ev.dst, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!((ev.src_port, ev.dst_port), (40000, 53));
        assert_eq!(ev.eth_proto, 0x0800);
        assert_eq!(ev.out_ifindex, None);
        assert_eq!(ev.tunnel_endpoint, Some(Ipv4Addr::new(192, 168, 0, 2)));
        assert_eq!(ev.src_identity, Identity(7));
        assert_eq!(ev.policy, None);
    }

    #[test]
    fn decodes_a_policy_drop() {
        let mut raw = raw_event();
        raw.reason = shared::FIBRIL_DROP_POLICY_DENIED as u8;
        raw.policy_dir = shared::FIBRIL_POLICY_EGRESS as u8;
        raw.policy_revision = 12;
        let ev = Event::decode(&bytes_of(&raw), Path::new("x")).unwrap();
        assert_eq!(ev.verdict, Verdict::Dropped(DropReason::PolicyDenied));
        assert_eq!(
            ev.policy,
            Some(PolicyVerdict {
                direction: PolicyDirection::Egress,
                revision: 12
            })
        );
        raw.policy_dir = 7;
        let err = Event::decode(&bytes_of(&raw), Path::new("x")).unwrap_err();
        assert!(
            matches!(
                err,
                BpfError::UnknownEventCode {
                    field: "policy direction",
                    value: 7,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_codes_and_sizes_are_errors_naming_the_field() {
        let mut raw = raw_event();
        raw.reason = 200;
        let err = Event::decode(&bytes_of(&raw), Path::new("x")).unwrap_err();
        assert!(
            matches!(
                err,
                BpfError::UnknownEventCode {
                    field: "drop reason",
                    value: 200,
                    ..
                }
            ),
            "{err}"
        );
        let mut raw = raw_event();
        raw.type_ = 9;
        let err = Event::decode(&bytes_of(&raw), Path::new("x")).unwrap_err();
        assert!(
            matches!(
                err,
                BpfError::UnknownEventCode {
                    field: "event type",
                    ..
                }
            ),
            "{err}"
        );
        let err = Event::decode(&[0; 3], Path::new("x")).unwrap_err();
        assert!(matches!(err, BpfError::EventSize { found: 3, .. }), "{err}");
    }
}
