/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The one definition of everything that crosses the C <-> Rust boundary:
 * map key/value structs, map names and sizes, program names, the load-time
 * configuration, event layouts and reason codes.
 *
 * The Rust side (crates/fibril-bpf) is generated from this file with bindgen,
 * including layout tests, so the two can never drift. Keep this header free of
 * kernel-only types: it is also parsed by bindgen in userspace, so it uses only
 * the fixed-width types from <linux/types.h>.
 *
 * Names are declared twice, side by side: once as an identifier (used by the C
 * program to name the ELF symbol) and once as a string (used by the loader).
 * crates/fibril-bpf has a test that checks every string against the compiled ELF.
 *
 * Byte order: IPv4 addresses and L4 ports are kept in network byte order, as
 * on the wire, everywhere in this file (map keys, map values, events). Enums
 * are numbered from 1 so that 0 never means anything: a zeroed field is
 * recognisably unset.
 */
#ifndef FIBRIL_SHARED_H
#define FIBRIL_SHARED_H

#include <linux/types.h>

/* ---- load-time configuration (bpf/lib/config.h) ------------------------- */

enum fibril_routing_mode {
	/* Counters only: every packet continues to the kernel stack unchanged.
	 * The zero value, so an object loaded without configuration (the lab's
	 * bridge-CNI counters, PodCounters) never forwards anything. */
	FIBRIL_ROUTING_NONE = 0,
	/* Remote pods are reached through the node's FIB (routes to other
	 * nodes' pod CIDRs via their node IPs) and bpf_redirect{,_neigh}. */
	FIBRIL_ROUTING_NATIVE = 1,
	/* Remote pods are reached through a collect_md VXLAN device, with the
	 * remote node IP taken from the ipcache. */
	FIBRIL_ROUTING_TUNNEL = 2,
};

/* A `const volatile` global in every object, set by the loader before the
 * programs are verified, so that the verifier prunes the other modes. */
struct fibril_config {
	__u32 routing_mode;   /* enum fibril_routing_mode */
	__u32 node_ipv4;      /* this node's IPv4 (network order) */
	__u32 tunnel_ifindex; /* VXLAN device (tunnel mode), in the node's netns */
	/* Forwarded and passed packets emit an event for one in trace_sample
	 * packets; 0 turns them off. Drops always emit an event. */
	__u32 trace_sample;
};

#define FIBRIL_GLOBAL_CONFIG fibril_cfg
#define FIBRIL_GLOBAL_CONFIG_NAME "fibril_cfg"

/* ---- endpoint counters (bpf/lib/metrics.h) ------------------------------ */

/* Per-endpoint packet/byte counters, keyed by the ifindex of the host side of
 * the pod's veth (ifindexes are per netns; the pin dir is per node and all pod
 * veths of a node live in the node's netns, so the key is unique per map). */
struct fibril_ep_key {
	__u32 ifindex;
};

/* Per-CPU value: userspace sums the CPUs. "from pod" is what the pod sent
 * (tc ingress on the host-side veth), "to pod" what it received (tc egress, or
 * a bpf_redirect_peer into the pod, which bypasses that egress hook). */
struct fibril_ep_stats {
	__u64 from_pod_packets;
	__u64 from_pod_bytes;
	__u64 to_pod_packets;
	__u64 to_pod_bytes;
};

/* Map names are at most 15 characters: the kernel keeps only BPF_OBJ_NAME_LEN
 * (16) bytes, and keeping the full name visible in bpftool avoids confusion. */
#define FIBRIL_MAP_EP_STATS fibril_ep_stats
#define FIBRIL_MAP_EP_STATS_NAME "fibril_ep_stats"
/* Pods per node, with headroom for veths that linger while pods churn. */
#define FIBRIL_EP_STATS_MAX_ENTRIES 4096

/* ---- endpoints: the addresses this node delivers to (bpf/lib/endpoints.h) */

struct fibril_endpoint_key {
	__u32 ipv4; /* network order */
};

enum fibril_endpoint_flags {
	/* An address of the node itself taken from the pod range (the pods'
	 * gateway): packets to it go to the node's stack. ifindex and the MACs
	 * are unused. */
	FIBRIL_ENDPOINT_F_HOST = 1 << 0,
};

struct fibril_endpoint {
	__u32 ifindex;    /* host side of the pod's veth, in the node's netns */
	__u32 identity;   /* security identity of the pod */
	__u8 mac[6];      /* the pod's eth0: destination MAC on delivery */
	__u8 node_mac[6]; /* the host-side veth: source MAC on delivery */
	__u32 flags;      /* enum fibril_endpoint_flags */
};

#define FIBRIL_MAP_ENDPOINTS fibril_endpoint
#define FIBRIL_MAP_ENDPOINTS_NAME "fibril_endpoint"
#define FIBRIL_ENDPOINTS_MAX_ENTRIES FIBRIL_EP_STATS_MAX_ENTRIES

/* ---- ipcache: what is known about every other prefix (LPM trie) --------- */

/* The layout the kernel's LPM trie requires: a prefix length in bits, then the
 * address bytes. */
struct fibril_ipcache_key {
	__u32 prefixlen;
	__u32 ipv4; /* network order */
};

enum fibril_remote_flags {
	/* The entry only names identities (the world, node addresses, ipBlock
	 * prefixes outside every pod range): routing treats the address as if
	 * the ipcache had no entry for it. */
	FIBRIL_REMOTE_F_NO_ROUTE = 1 << 0,
};

struct fibril_remote {
	/* The prefix's security identity (a pod's, a reserved one, or a CIDR
	 * identity); FIBRIL_IDENTITY_ANY while unknown. */
	__u32 identity;
	/* IPv4 of the node hosting the prefix (network order), 0 if none: in
	 * tunnel mode, the VXLAN destination. An entry whose tunnel endpoint is
	 * this node's own IP is this node's pod range. */
	__u32 tunnel_endpoint;
	__u32 flags; /* enum fibril_remote_flags */
	/* The CIDR identity of the longest ipBlock prefix containing this one
	 * when that is not `identity` (ipBlocks select pod addresses too); 0 if
	 * none. Policy looks the peer up by identity, then by this. */
	__u32 cidr_identity;
};

#define FIBRIL_MAP_IPCACHE fibril_ipcache
#define FIBRIL_MAP_IPCACHE_NAME "fibril_ipcache"
#define FIBRIL_IPCACHE_MAX_ENTRIES 16384

/* ---- security identities ------------------------------------------------- */

/* The numbering of identities (ipcache values, endpoint identities, policy
 * keys). fibril-core's policy::identity mirrors these values and a test there
 * checks them against this header. */
enum fibril_identity_reserved {
	/* The wildcard peer in a policy key; also "unknown" in events. No
	 * ipcache lookup yields it (0.0.0.0/0 maps to WORLD). */
	FIBRIL_IDENTITY_ANY = 0,
	FIBRIL_IDENTITY_HOST = 1,        /* this node */
	FIBRIL_IDENTITY_WORLD = 2,       /* outside the cluster, no ipBlock */
	FIBRIL_IDENTITY_UNMANAGED = 3,   /* in a pod range, no known pod */
	FIBRIL_IDENTITY_REMOTE_NODE = 6, /* another node of the cluster */
};

/* Pod identities (cluster scope, may travel in the 24-bit VXLAN VNI). */
#define FIBRIL_IDENTITY_FIRST_POD 256
/* CIDR identities of ipBlock prefixes (node-local) up to the maximum. */
#define FIBRIL_IDENTITY_FIRST_CIDR 0x00800000
#define FIBRIL_IDENTITY_MAX 0x00ffffff

/* ---- events: a ring buffer of forwarded, passed and dropped packets ----- */

enum fibril_event_type {
	FIBRIL_EVENT_DROPPED = 1,   /* reason: enum fibril_drop_reason */
	FIBRIL_EVENT_FORWARDED = 2, /* reason: enum fibril_fwd_path */
	FIBRIL_EVENT_PASSED = 3,    /* reason: enum fibril_pass_reason */
};

/* Where a program runs; the event's observation point. */
enum fibril_hook {
	FIBRIL_HOOK_FROM_POD = 1,    /* tc ingress, host side of a pod veth */
	FIBRIL_HOOK_TO_POD = 2,      /* tc egress, host side of a pod veth */
	FIBRIL_HOOK_FROM_NETDEV = 3, /* tc ingress, the node's underlay device */
	FIBRIL_HOOK_FROM_TUNNEL = 4, /* tc ingress, the node's VXLAN device */
};

/* Why a packet was dropped (TC_ACT_SHOT). Every drop emits an event and
 * counts in the drop counters. */
enum fibril_drop_reason {
	/* Claims IPv4 but the header is truncated or has IHL < 5. */
	FIBRIL_DROP_MALFORMED = 1,
	/* TTL <= 1 at a hop fibril routes (fibril routes as a router would,
	 * decrementing the TTL). */
	FIBRIL_DROP_TTL_EXCEEDED = 2,
	/* The destination is in this node's own pod range (an ipcache entry
	 * whose tunnel endpoint is this node) but is no endpoint: a pod that is
	 * gone or not set up yet. */
	FIBRIL_DROP_NO_ENDPOINT = 3,
	/* The FIB lookup said so (native routing): a blackhole, unreachable or
	 * prohibit route. */
	FIBRIL_DROP_FIB_BLACKHOLE = 4,
	FIBRIL_DROP_FIB_UNREACHABLE = 5,
	FIBRIL_DROP_FIB_PROHIBIT = 6,
	/* IPv4 forwarding is disabled on the device the packet came in on
	 * (net.ipv4.conf.<dev>.forwarding = 0). */
	FIBRIL_DROP_FIB_FWD_DISABLED = 7,
	/* The route needs a lightweight-tunnel encapsulation, which fibril
	 * does not do. */
	FIBRIL_DROP_FIB_UNSUPP_LWT = 8,
	/* bpf_fib_lookup failed, or returned a code this build does not know. */
	FIBRIL_DROP_FIB_ERROR = 9,
	/* bpf_skb_set_tunnel_key failed. */
	FIBRIL_DROP_TUNNEL_KEY = 10,
	/* Rewriting the packet (MACs, TTL, checksum) failed. */
	FIBRIL_DROP_REWRITE = 11,
	/* A redirect helper refused the redirect. */
	FIBRIL_DROP_REDIRECT = 12,
	/* A new connection to a service frontend without backends. Not a
	 * silent drop: the client's packet is consumed and answered in place
	 * (TCP RST, or ICMP port unreachable for UDP), so the verdict is a
	 * redirect back to the client; a TCP RST to such a frontend is only
	 * counted. */
	FIBRIL_DROP_SVC_NO_BACKEND = 13,
	/* The backend slot the service entry names was gone, twice: the
	 * service's backends were replaced while the packet was in flight. */
	FIBRIL_DROP_SVC_BACKEND_GONE = 14,
	/* Every probed source port for a masqueraded (SNAT) connection was
	 * taken. */
	FIBRIL_DROP_NAT_NO_PORT = 15,
	/* The conntrack entry of a new service connection could not be
	 * written. */
	FIBRIL_DROP_CT_CREATE = 16,
	/* NetworkPolicy: a new connection of an isolated endpoint that no
	 * entry of its policy map allows (bpf/lib/policy.h). The event names
	 * the direction and the endpoint's policy revision. */
	FIBRIL_DROP_POLICY_DENIED = 17,
	__FIBRIL_DROP_MAX,
};

/* How a packet was forwarded (TC_ACT_REDIRECT). */
enum fibril_fwd_path {
	/* bpf_redirect_peer into a pod of this node. */
	FIBRIL_FWD_LOCAL = 1,
	/* Native routing, FIB hit with a resolved neighbour: MACs rewritten,
	 * bpf_redirect out of the FIB's device. */
	FIBRIL_FWD_NATIVE = 2,
	/* Native routing, FIB hit without a resolved neighbour:
	 * bpf_redirect_neigh, which resolves it (ARP) and queues the packet. */
	FIBRIL_FWD_NATIVE_NEIGH = 3,
	/* Tunnel routing: tunnel key set, bpf_redirect to the VXLAN device. */
	FIBRIL_FWD_TUNNEL = 4,
	__FIBRIL_FWD_MAX,
};

/* Why a packet was handed to the node's stack unchanged (TC_ACT_OK). */
enum fibril_pass_reason {
	/* Not IPv4 (ARP, IPv6, ...): the stack handles it. */
	FIBRIL_PASS_NOT_IPV4 = 1,
	/* The destination is an address of the node itself (a host endpoint). */
	FIBRIL_PASS_TO_HOST = 2,
	/* The destination is not a pod fibril forwards to: the node, the
	 * world, or (on the underlay and tunnel hooks) anything but an
	 * endpoint of this node. */
	FIBRIL_PASS_UNKNOWN_DST = 3,
	/* Tunnel mode: the ipcache entry has no tunnel endpoint. */
	FIBRIL_PASS_NO_TUNNEL_ENDPOINT = 4,
	/* Native mode: the FIB says the destination is local to this node. */
	FIBRIL_PASS_FIB_NOT_FWDED = 5,
	/* Native mode: larger than the egress MTU: the stack fragments it or
	 * answers with ICMP "fragmentation needed" (path MTU discovery). */
	FIBRIL_PASS_FIB_FRAG_NEEDED = 6,
	__FIBRIL_PASS_MAX,
};

struct fibril_event {
	__u64 timestamp_ns;    /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u32 src_ipv4;        /* network order; 0 if not IPv4 */
	__u32 dst_ipv4;        /* network order; 0 if not IPv4 */
	__u32 src_identity;    /* from the endpoints or the ipcache; 0 if unknown */
	__u32 dst_identity;    /* likewise */
	__u32 ifindex;         /* the device the program ran on */
	__u32 out_ifindex;     /* redirect target (forwarded, and drops after
				  the decision), 0 otherwise */
	__u32 tunnel_endpoint; /* remote node for cross-node traffic, 0 otherwise */
	__u32 len;             /* skb->len */
	__u16 src_port;        /* network order; TCP/UDP, first fragment only */
	__u16 dst_port;        /* network order */
	__u16 eth_proto;       /* network order */
	__u8 type;             /* enum fibril_event_type */
	__u8 reason;           /* by type: drop reason, fwd path or pass reason */
	__u8 hook;             /* enum fibril_hook */
	__u8 proto;            /* IP protocol */
	/* FIBRIL_DROP_POLICY_DENIED: the direction that denied (enum
	 * fibril_policy_dir) and the endpoint's policy revision (low 32 bits);
	 * 0 otherwise. */
	__u8 policy_dir;
	__u8 pad;
	__u32 policy_revision;
};

#define FIBRIL_MAP_EVENTS fibril_events
#define FIBRIL_MAP_EVENTS_NAME "fibril_events"
/* Bytes; a power of two and a multiple of the page size. */
#define FIBRIL_EVENTS_RING_BYTES (256 * 1024)

/* Drop counters by reason (index: enum fibril_drop_reason), per CPU, so that
 * drops stay countable when events are lost or nobody reads them. */
struct fibril_drop_stats {
	__u64 packets;
	__u64 bytes;
};

#define FIBRIL_MAP_DROPS fibril_drops
#define FIBRIL_MAP_DROPS_NAME "fibril_drops"

/* Events that did not fit in the ring buffer (reader too slow or absent),
 * one per-CPU __u64 at index 0. */
#define FIBRIL_MAP_EVENTS_LOST fibril_ev_lost
#define FIBRIL_MAP_EVENTS_LOST_NAME "fibril_ev_lost"

/* ---- services: load balancing (bpf/lib/lb.h) ---------------------------- *
 *
 * A frontend (address, port, protocol, scope) maps to a service entry; its
 * backends live in a second map under (service id, revision, slot). A table
 * change writes the new revision's backends first and then replaces the
 * service entry in one update, so a packet sees either the old list or the
 * new one, never a mix; the old revision's slots are deleted afterwards.
 */

/* Which clients a frontend serves (fibril_core::services::Scope): packets
 * from this node's pods look up INTERNAL first, then EXTERNAL; packets from
 * the underlay look up EXTERNAL only. */
enum fibril_svc_scope {
	FIBRIL_SVC_SCOPE_EXTERNAL = 1,
	FIBRIL_SVC_SCOPE_INTERNAL = 2,
};

/* How a frontend came to exist (fibril_core::services::FrontendKind). The
 * underlay hook serves every kind but CLUSTER_IP. */
enum fibril_svc_kind {
	FIBRIL_SVC_KIND_CLUSTER_IP = 1,
	FIBRIL_SVC_KIND_NODE_PORT = 2,
	FIBRIL_SVC_KIND_EXTERNAL_IP = 3,
	FIBRIL_SVC_KIND_LOAD_BALANCER = 4,
};

enum fibril_svc_flags {
	/* externalTrafficPolicy Local: traffic from the underlay keeps its
	 * source address (the table then holds only local backends). Without
	 * it, underlay traffic to a remote backend is masqueraded to the
	 * node's address. */
	FIBRIL_SVC_F_PRESERVE_CLIENT_IP = 1 << 0,
};

struct fibril_svc_key {
	__u32 ipv4;  /* network order */
	__u16 port;  /* network order */
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 scope;  /* enum fibril_svc_scope */
};

struct fibril_svc {
	__u32 id;    /* >= 1; keys the backends, affinity and meta entries */
	__u16 rev;   /* the backends of this revision are the live list */
	__u16 count; /* slots 0..count-1; 0: reject new connections */
	/* sessionAffinity ClientIP timeout in seconds; 0: no affinity. */
	__u32 affinity_timeout;
	__u8 kind;   /* enum fibril_svc_kind */
	__u8 flags;  /* enum fibril_svc_flags */
	__u16 pad;
};

#define FIBRIL_MAP_SERVICES fibril_svc
#define FIBRIL_MAP_SERVICES_NAME "fibril_svc"
/* Frontends per node; maps sized in hundreds of thousands are created
 * without preallocation, so they cost memory only for what they hold. */
#define FIBRIL_SERVICES_MAX_ENTRIES 262144

struct fibril_backend_key {
	__u32 svc_id;
	__u16 rev;
	__u16 slot;
};

enum fibril_backend_flags {
	/* The backend runs on this node. */
	FIBRIL_BACKEND_F_LOCAL = 1 << 0,
	/* Serving but terminating (in the list only as the KEP-1669
	 * fallback); informational, the datapath treats it like any other. */
	FIBRIL_BACKEND_F_TERMINATING = 1 << 1,
};

struct fibril_backend {
	__u32 ipv4;  /* network order */
	__u16 port;  /* network order */
	__u8 flags;  /* enum fibril_backend_flags */
	__u8 pad;
};

#define FIBRIL_MAP_BACKENDS fibril_svc_be
#define FIBRIL_MAP_BACKENDS_NAME "fibril_svc_be"
#define FIBRIL_BACKENDS_MAX_ENTRIES 524288

/* Membership of a backend in a revision of a service, written for services
 * with session affinity only: an affinity entry is honoured only while its
 * backend is still in the service's live list. */
struct fibril_svc_member_key {
	__u32 svc_id;
	__u16 rev;
	__u16 port; /* network order */
	__u32 ipv4; /* network order */
};

#define FIBRIL_MAP_SVC_MEMBERS fibril_svc_memb
#define FIBRIL_MAP_SVC_MEMBERS_NAME "fibril_svc_memb"
#define FIBRIL_SVC_MEMBERS_MAX_ENTRIES FIBRIL_BACKENDS_MAX_ENTRIES

/* sessionAffinity ClientIP: the backend a client last got from a service,
 * and when (LRU: old clients fall out). */
struct fibril_affinity_key {
	__u32 client_ipv4; /* network order */
	__u32 svc_id;
};

struct fibril_affinity {
	__u64 last_used_ns; /* bpf_ktime_get_ns of the last new connection */
	struct fibril_backend backend;
};

#define FIBRIL_MAP_AFFINITY fibril_svc_aff
#define FIBRIL_MAP_AFFINITY_NAME "fibril_svc_aff"
#define FIBRIL_AFFINITY_MAX_ENTRIES 65536

/* What a service entry is called, for dumps and after an agent restart
 * (the programs never read it). NUL-padded; Kubernetes bounds all three
 * at 63 characters (a Service port name is a DNS label, unlike a container
 * port name, which is an IANA service name of at most 15). */
#define FIBRIL_SVC_NAMESPACE_LEN 64
#define FIBRIL_SVC_NAME_LEN 64
#define FIBRIL_SVC_PORT_NAME_LEN 64

struct fibril_svc_meta {
	__u8 namespace_[FIBRIL_SVC_NAMESPACE_LEN];
	__u8 name[FIBRIL_SVC_NAME_LEN];
	__u8 port_name[FIBRIL_SVC_PORT_NAME_LEN];
};

#define FIBRIL_MAP_SVC_META fibril_svc_meta
#define FIBRIL_MAP_SVC_META_NAME "fibril_svc_meta"
#define FIBRIL_SVC_META_MAX_ENTRIES FIBRIL_SERVICES_MAX_ENTRIES

/* The source address of hairpinned connections: a pod that reaches itself
 * through a service sees the connection come from here, since a packet from
 * its own address would be a martian. Host byte order (a constant, unlike
 * the map fields): 169.254.42.1. */
#define FIBRIL_SVC_LOOPBACK_IPV4 0xa9fe2a01

/* ---- conntrack: service connections (bpf/lib/conntrack.h) ---------------- *
 *
 * Two entries per connection, keyed by the tuple as it is seen on the wire:
 * FORWARD under the client's tuple (client -> frontend), REPLY under the
 * backend's (backend -> client, or -> the SNAT address). Each holds the
 * tuple its packets are rewritten to. A connection lives while either
 * entry has not expired; each direction refreshes its own entry.
 */

struct fibril_ct_key {
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 sport; /* network order */
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

enum fibril_ct_dir {
	FIBRIL_CT_FORWARD = 1,
	FIBRIL_CT_REPLY = 2,
};

enum fibril_ct_flags {
	/* The source is translated: to the node's address (masquerade) or
	 * to the service loopback address (hairpin). */
	FIBRIL_CT_F_SNAT = 1 << 0,
	FIBRIL_CT_F_HAIRPIN = 1 << 1,
	/* TCP: this direction sent a segment without SYN (the handshake is
	 * done from its side). */
	FIBRIL_CT_F_ESTABLISHED = 1 << 2,
	/* TCP: this direction sent a FIN. */
	FIBRIL_CT_F_FIN = 1 << 3,
	/* TCP: this direction sent an RST. */
	FIBRIL_CT_F_RST = 1 << 4,
};

struct fibril_ct_entry {
	__u64 expires_ns; /* bpf_ktime_get_ns deadline */
	/* The tuple after translation (network order). */
	__u32 nat_saddr;
	__u32 nat_daddr;
	__u16 nat_sport;
	__u16 nat_dport;
	__u32 svc_id;     /* the service entry the connection was made through */
	__u8 dir;         /* enum fibril_ct_dir */
	__u8 flags;       /* enum fibril_ct_flags */
	__u8 pad[6];
};

#define FIBRIL_MAP_CT fibril_ct
#define FIBRIL_MAP_CT_NAME "fibril_ct"
/* Two entries per connection. LRU: the oldest connections are evicted
 * when it is full. */
#define FIBRIL_CT_MAX_ENTRIES 131072

/* Idle timeouts, in seconds (TCP by the state of the entry's direction). */
#define FIBRIL_CT_TCP_SYN_SECS 60
#define FIBRIL_CT_TCP_ESTABLISHED_SECS 21600
#define FIBRIL_CT_TCP_CLOSING_SECS 10
#define FIBRIL_CT_UDP_SECS 60

/* Masquerade source ports (host byte order): above the kernel's default
 * ephemeral range, so that they never meet the node's own connections. */
#define FIBRIL_SNAT_PORT_MIN 61000
#define FIBRIL_SNAT_PORT_MAX 65535
/* Random ports tried per new masqueraded connection. */
#define FIBRIL_SNAT_PROBES 32

/* ---- IPv4 fragments of service traffic (bpf/lib/l4.h) -------------------- *
 *
 * Only the first fragment of a datagram carries the ports; the others are
 * matched to it by (source, destination, IP id, protocol), so that they get
 * the same translation. */

struct fibril_frag_key {
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 id;    /* the IPv4 identification, network order */
	__u8 proto;
	__u8 pad;
};

struct fibril_frag_ports {
	__u16 sport; /* network order */
	__u16 dport;
};

#define FIBRIL_MAP_FRAGS fibril_frags
#define FIBRIL_MAP_FRAGS_NAME "fibril_frags"
#define FIBRIL_FRAGS_MAX_ENTRIES 8192

/* ---- network policy (bpf/lib/policy.h) ----------------------------------- *
 *
 * Endpoints are named by the ifindex of the host side of their veth. An
 * endpoint with an entry in fibril_pol_ep is isolated in the directions its
 * flags say; one without is not isolated at all and costs one lookup. The
 * allow entries of every endpoint live in one LPM trie, keyed by (endpoint,
 * generation, peer identity, direction) matched in full, then protocol and
 * destination port by prefix (fibril_core::policy::map's layout behind the
 * endpoint, generation and direction). An endpoint's entries are replaced
 * by writing them under a new generation and then flipping the endpoint's
 * entry to it, so a packet sees all of the old map or all of the new one.
 */

enum fibril_policy_dir {
	FIBRIL_POLICY_INGRESS = 1,
	FIBRIL_POLICY_EGRESS = 2,
};

enum fibril_policy_ep_flags {
	FIBRIL_POLICY_F_INGRESS = 1 << 0, /* ingress is isolated */
	FIBRIL_POLICY_F_EGRESS = 1 << 1,  /* egress is isolated */
};

struct fibril_policy_ep_key {
	__u32 ifindex; /* host side of the pod's veth */
};

struct fibril_policy_ep {
	__u32 flags;      /* enum fibril_policy_ep_flags */
	__u32 generation; /* the generation of the live entries */
	__u32 revision;   /* the endpoint's policy revision, for drop events */
	__u32 identity;   /* the endpoint's own identity */
};

#define FIBRIL_MAP_POLICY_EP fibril_pol_ep
#define FIBRIL_MAP_POLICY_EP_NAME "fibril_pol_ep"
#define FIBRIL_POLICY_EP_MAX_ENTRIES FIBRIL_EP_STATS_MAX_ENTRIES

/* The matched part of a policy key (after the LPM prefix length). */
struct fibril_policy_match {
	__u32 endpoint;   /* ifindex, as in fibril_policy_ep_key */
	__u32 generation;
	__u32 identity;   /* the peer's; FIBRIL_IDENTITY_ANY: every peer */
	__u8 direction;   /* enum fibril_policy_dir */
	__u8 proto;       /* IP protocol */
	__u16 port;       /* destination port, network order */
};

struct fibril_policy_key {
	__u32 prefixlen;
	struct fibril_policy_match data;
};

/* Prefix lengths: endpoint, generation, identity and direction always;
 * + 8: one protocol; + 8 + n: a port prefix of n bits. */
#define FIBRIL_POLICY_PREFIX_ALL_PROTOS 104
#define FIBRIL_POLICY_PREFIX_PROTO 112
#define FIBRIL_POLICY_PREFIX_FULL 128

/* NetworkPolicy only allows: every entry is an allow. */
struct fibril_policy_entry {
	__u32 flags; /* reserved, 0 */
};

#define FIBRIL_MAP_POLICY fibril_policy
#define FIBRIL_MAP_POLICY_NAME "fibril_policy"
#define FIBRIL_POLICY_MAX_ENTRIES 262144

/* Policy conntrack: the connections an isolated endpoint has let through
 * (or made while not isolated in that direction), so that their later
 * packets and replies pass without a policy lookup. Two entries per
 * connection and endpoint: the tuple as the packet that opened it carries
 * it, in the direction it crossed the endpoint, and the reversed tuple in
 * the other direction. Per endpoint and direction, so that one endpoint's
 * verdict never stands in for another's (a same-node connection meets two
 * endpoints in one program). Services: the tuple is the backend's (after
 * DNAT); a reply the service layer translated back is found under the
 * backend's tuple through the service conntrack. */
struct fibril_policy_ct_key {
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 sport; /* network order; 0 without ports */
	__u16 dport;
	__u8 proto;
	__u8 direction; /* enum fibril_policy_dir, at this endpoint */
	__u16 pad;
	__u32 ifindex;  /* the endpoint */
};

struct fibril_policy_ct {
	__u64 expires_ns; /* bpf_ktime_get_ns deadline */
	__u8 flags;       /* enum fibril_ct_flags (TCP state of this direction) */
	__u8 pad[7];
};

#define FIBRIL_MAP_POLICY_CT fibril_pol_ct
#define FIBRIL_MAP_POLICY_CT_NAME "fibril_pol_ct"
#define FIBRIL_POLICY_CT_MAX_ENTRIES 131072

/* ---- programs of bpf/pod.bpf.c (host side of a pod veth) ---------------- */

/* tc ingress on the host-side veth: packets coming from the pod. */
#define FIBRIL_PROG_FROM_POD fib_from_pod
#define FIBRIL_PROG_FROM_POD_NAME "fib_from_pod"
/* tc egress on the host-side veth: packets going to the pod. */
#define FIBRIL_PROG_TO_POD fib_to_pod
#define FIBRIL_PROG_TO_POD_NAME "fib_to_pod"

/* ---- programs of bpf/host.bpf.c (the node's own devices) ---------------- */

/* tc ingress on the underlay device: packets from other nodes. */
#define FIBRIL_PROG_FROM_NETDEV fib_from_netdev
#define FIBRIL_PROG_FROM_NETDEV_NAME "fib_from_netdev"
/* tc ingress on the VXLAN device: decapsulated packets from other nodes. */
#define FIBRIL_PROG_FROM_TUNNEL fib_from_tunnel
#define FIBRIL_PROG_FROM_TUNNEL_NAME "fib_from_tunnel"

#endif /* FIBRIL_SHARED_H */
