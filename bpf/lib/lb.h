/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Service load balancing: the kube-proxy replacement.
 *
 * Per packet to a frontend (one hash lookup for the frontend, one LRU
 * lookup for conntrack):
 *   - a live FORWARD conntrack entry: the packet follows its connection's
 *     translation, whatever the service's backends are now (established
 *     connections survive backend churn);
 *   - otherwise a new connection: no backends -> reject (reject.h);
 *     else pick a backend (the client's session-affinity backend while it
 *     is fresh and still in the list, else a random slot: one more lookup),
 *     translate the destination to it, and the source when
 *       - the backend is the client itself (hairpin): to the service
 *         loopback address, since the pod would drop a packet from itself;
 *       - the client is outside the node (underlay), the backend on another
 *         node and the client IP is not to be preserved: to the node's
 *         address, with a source port from the SNAT range, so that the
 *         reply comes back here;
 *     then write REPLY and FORWARD conntrack entries.
 * Per packet from a backend (or to the SNAT address): a REPLY entry
 * translates it back to what the client expects (source = the frontend).
 *
 * Then the packet is routed by its new destination (route_after_nat).
 */
#ifndef FIBRIL_LIB_LB_H
#define FIBRIL_LIB_LB_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "config.h"
#include "conntrack.h"
#include "endpoints.h"
#include "events.h"
#include "fib.h"
#include "l3.h"
#include "l4.h"
#include "nat.h"
#include "reject.h"
#include "tunnel.h"

/* Returned by the service layer when the packet is not its business. */
#define LB_NOT_HANDLED (-2)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FIBRIL_SERVICES_MAX_ENTRIES);
	__type(key, struct fibril_svc_key);
	__type(value, struct fibril_svc);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_SERVICES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FIBRIL_BACKENDS_MAX_ENTRIES);
	__type(key, struct fibril_backend_key);
	__type(value, struct fibril_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_BACKENDS SEC(".maps");

/* Value: the backend's slot in that revision. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FIBRIL_SVC_MEMBERS_MAX_ENTRIES);
	__type(key, struct fibril_svc_member_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_SVC_MEMBERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FIBRIL_AFFINITY_MAX_ENTRIES);
	__type(key, struct fibril_affinity_key);
	__type(value, struct fibril_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_AFFINITY SEC(".maps");

/* Written and read by the agent only (names for dumps); defined here so
 * that every object pins the same map. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FIBRIL_SVC_META_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct fibril_svc_meta);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_SVC_META SEC(".maps");

/* The frontend f is addressed to. Pods (internal clients) are served by an
 * INTERNAL entry if there is one, else the EXTERNAL one; the underlay only
 * by EXTERNAL entries that are not ClusterIPs. */
static __always_inline struct fibril_svc *svc_lookup(const struct flow *f, int from_pod,
						     struct fibril_svc_key *key)
{
	struct fibril_svc *svc;

	key->ipv4 = f->daddr;
	key->port = f->dport;
	key->proto = f->proto;
	if (from_pod) {
		key->scope = FIBRIL_SVC_SCOPE_INTERNAL;
		svc = bpf_map_lookup_elem(&FIBRIL_MAP_SERVICES, key);
		if (svc)
			return svc;
	}
	key->scope = FIBRIL_SVC_SCOPE_EXTERNAL;
	svc = bpf_map_lookup_elem(&FIBRIL_MAP_SERVICES, key);
	if (svc && !from_pod && svc->kind == FIBRIL_SVC_KIND_CLUSTER_IP)
		return NULL;
	return svc;
}

/* Picks the backend of a new connection from client into *out. Returns -1
 * if the slot it picked is gone (the list is being replaced). */
static __always_inline int backend_pick(const struct fibril_svc *svc, __u32 client, __u64 now,
					struct fibril_backend *out)
{
	struct fibril_affinity_key ak = { .client_ipv4 = client, .svc_id = svc->id };
	struct fibril_backend_key bk = { .svc_id = svc->id, .rev = svc->rev };
	struct fibril_affinity *aff;
	struct fibril_backend *be;

	if (svc->affinity_timeout) {
		aff = bpf_map_lookup_elem(&FIBRIL_MAP_AFFINITY, &ak);
		if (aff && now - aff->last_used_ns <= (__u64)svc->affinity_timeout * NS_PER_SEC) {
			struct fibril_svc_member_key mk = {
				.svc_id = svc->id,
				.rev = svc->rev,
				.port = aff->backend.port,
				.ipv4 = aff->backend.ipv4,
			};

			if (bpf_map_lookup_elem(&FIBRIL_MAP_SVC_MEMBERS, &mk)) {
				*out = aff->backend;
				aff->last_used_ns = now;
				return 0;
			}
		}
	}

	bk.slot = bpf_get_prandom_u32() % svc->count;
	be = bpf_map_lookup_elem(&FIBRIL_MAP_BACKENDS, &bk);
	if (!be)
		return -1;
	*out = *be;
	if (svc->affinity_timeout) {
		struct fibril_affinity a = { .last_used_ns = now, .backend = *be };

		/* Best effort: without it the next connection picks afresh. */
		bpf_map_update_elem(&FIBRIL_MAP_AFFINITY, &ak, &a, BPF_ANY);
	}
	return 0;
}

/* Writes the REPLY entry rev under rkey with a free source port: preferred
 * first (if not 0), then random ports of the SNAT range. A taken port whose
 * connection is dead is reused. Returns the port (network order), 0 if none
 * was free. */
static __always_inline __u16 snat_claim(struct fibril_ct_key *rkey,
					const struct fibril_ct_entry *rev, __u16 preferred,
					__u64 now)
{
	const __u32 range = FIBRIL_SNAT_PORT_MAX - FIBRIL_SNAT_PORT_MIN + 1;
	__u32 start = bpf_get_prandom_u32() % range;
	struct fibril_ct_entry *taken;
	int i;

	if (preferred) {
		rkey->dport = preferred;
		if (bpf_map_update_elem(&FIBRIL_MAP_CT, rkey, rev, BPF_NOEXIST) == 0)
			return preferred;
	}
	for (i = 0; i < FIBRIL_SNAT_PROBES; i++) {
		__u32 port = FIBRIL_SNAT_PORT_MIN + (start + i) % range;

		rkey->dport = bpf_htons((__u16)port);
		if (bpf_map_update_elem(&FIBRIL_MAP_CT, rkey, rev, BPF_NOEXIST) == 0)
			return rkey->dport;
		taken = bpf_map_lookup_elem(&FIBRIL_MAP_CT, rkey);
		if (taken && !ct_alive(rkey, taken, now) &&
		    bpf_map_update_elem(&FIBRIL_MAP_CT, rkey, rev, BPF_ANY) == 0)
			return rkey->dport;
	}
	return 0;
}

/* Routes a translated packet by its new destination: a local endpoint, a
 * tunnel to the node hosting it (tunnel mode), or the FIB (for everything
 * else, the world included: the stack would refuse a packet whose source is
 * now the node's own address). */
static __always_inline int route_after_nat(struct __sk_buff *skb, struct flow *f)
{
	struct fibril_endpoint *ep;
	struct fibril_remote *remote;

	/* The client pod's egress policy, on the backend (policy.h). */
	if (f->hook == FIBRIL_HOOK_FROM_POD) {
		int verdict = policy_enforce(skb, f, skb->ifindex, FIBRIL_POLICY_EGRESS);

		if (verdict != POLICY_PASS)
			return verdict;
	}
	ep = endpoint_lookup(f->daddr);
	if (ep)
		return deliver_local(skb, f, ep);
	remote = ipcache_lookup(f->daddr);
	if (remote) {
		f->dst_identity = remote->identity;
		f->tunnel_endpoint = remote->tunnel_endpoint;
		if (remote->tunnel_endpoint && remote->tunnel_endpoint == CONFIG(node_ipv4))
			return drop(skb, f, FIBRIL_DROP_NO_ENDPOINT);
		if (CONFIG(routing_mode) == FIBRIL_ROUTING_TUNNEL && remote->tunnel_endpoint)
			return tunnel_forward(skb, f, remote);
	}
	return fib_forward(skb, f);
}

static __always_inline int translate_and_route(struct __sk_buff *skb, struct flow *f,
					       const struct fibril_ct_entry *e)
{
	if (nat_rewrite(skb, f, e->nat_saddr, e->nat_daddr, e->nat_sport, e->nat_dport) < 0)
		return drop(skb, f, FIBRIL_DROP_REWRITE);
	return route_after_nat(skb, f);
}

/* A new connection through svc: pick, write conntrack, translate, route. */
static __always_inline int svc_connect(struct __sk_buff *skb, struct flow *f,
				       const struct fibril_svc_key *skey, struct fibril_svc *svc,
				       const struct fibril_ct_key *key, int from_pod, __u64 now)
{
	struct fibril_ct_key rkey = {};
	struct fibril_ct_entry fwd = {};
	struct fibril_ct_entry rev = {};
	struct fibril_backend be;
	__u8 nat_flags = 0;

	if (svc->count == 0) {
		/* A later fragment: its first was answered already. */
		if (!f->has_ports)
			return drop(skb, f, FIBRIL_DROP_SVC_NO_BACKEND);
		return reject(skb, f);
	}
	if (backend_pick(svc, f->saddr, now, &be) < 0) {
		/* The list was replaced under us: the service entry now names
		 * the new revision. */
		svc = bpf_map_lookup_elem(&FIBRIL_MAP_SERVICES, skey);
		if (svc && svc->count == 0)
			return f->has_ports ? reject(skb, f) : drop(skb, f, FIBRIL_DROP_SVC_NO_BACKEND);
		if (!svc || backend_pick(svc, f->saddr, now, &be) < 0)
			return drop(skb, f, FIBRIL_DROP_SVC_BACKEND_GONE);
	}

	fwd.dir = FIBRIL_CT_FORWARD;
	fwd.svc_id = svc->id;
	fwd.nat_saddr = f->saddr;
	fwd.nat_sport = f->sport;
	fwd.nat_daddr = be.ipv4;
	fwd.nat_dport = be.port;
	if (from_pod && be.ipv4 == f->saddr) {
		fwd.nat_saddr = bpf_htonl(FIBRIL_SVC_LOOPBACK_IPV4);
		nat_flags = FIBRIL_CT_F_SNAT | FIBRIL_CT_F_HAIRPIN;
	} else if (!from_pod && !(be.flags & FIBRIL_BACKEND_F_LOCAL) &&
		   !(svc->flags & FIBRIL_SVC_F_PRESERVE_CLIENT_IP)) {
		fwd.nat_saddr = CONFIG(node_ipv4);
		nat_flags = FIBRIL_CT_F_SNAT;
	}

	rev.dir = FIBRIL_CT_REPLY;
	rev.svc_id = svc->id;
	rev.flags = nat_flags;
	rev.nat_saddr = f->daddr;
	rev.nat_sport = f->dport;
	rev.nat_daddr = f->saddr;
	rev.nat_dport = f->sport;
	rev.expires_ns = now + ct_timeout_ns(f->proto, 0);

	rkey.saddr = be.ipv4;
	rkey.daddr = fwd.nat_saddr;
	rkey.sport = be.port;
	rkey.proto = f->proto;
	if (nat_flags) {
		/* A hairpinned connection keeps its port unless it is taken;
		 * a masqueraded one always takes one from the SNAT range. */
		__u16 preferred = (nat_flags & FIBRIL_CT_F_HAIRPIN) ? f->sport : 0;

		fwd.nat_sport = snat_claim(&rkey, &rev, preferred, now);
		if (!fwd.nat_sport)
			return drop(skb, f, FIBRIL_DROP_NAT_NO_PORT);
	} else {
		rkey.dport = f->sport;
		if (bpf_map_update_elem(&FIBRIL_MAP_CT, &rkey, &rev, BPF_ANY) < 0)
			return drop(skb, f, FIBRIL_DROP_CT_CREATE);
	}

	fwd.flags = ct_flags_after(nat_flags, f);
	fwd.expires_ns = now + ct_timeout_ns(f->proto, fwd.flags);
	if (bpf_map_update_elem(&FIBRIL_MAP_CT, key, &fwd, BPF_ANY) < 0)
		return drop(skb, f, FIBRIL_DROP_CT_CREATE);
	return translate_and_route(skb, f, &fwd);
}

/* The service layer of a hook: packets to a frontend, and replies of
 * service connections. f must have its ports (parse_l4 done). Returns a tc
 * verdict, or LB_NOT_HANDLED for plain traffic. */
static __always_inline int lb_handle(struct __sk_buff *skb, struct flow *f, int from_pod)
{
	struct fibril_svc_key skey = {};
	struct fibril_ct_key key = {};
	struct fibril_ct_entry *ct;
	struct fibril_svc *svc;
	__u64 now;

	ct_key_of(f, &key);
	svc = svc_lookup(f, from_pod, &skey);
	if (svc) {
		now = bpf_ktime_get_ns();
		ct = bpf_map_lookup_elem(&FIBRIL_MAP_CT, &key);
		if (ct && ct->dir == FIBRIL_CT_FORWARD && !ct_reopens(ct, f) &&
		    ct_alive(&key, ct, now)) {
			ct_refresh(ct, f, now);
			return translate_and_route(skb, f, ct);
		}
		return svc_connect(skb, f, &skey, svc, &key, from_pod, now);
	}

	/* Plain traffic (most of it) ends here, without reading the clock. */
	ct = bpf_map_lookup_elem(&FIBRIL_MAP_CT, &key);
	if (!ct || ct->dir != FIBRIL_CT_REPLY)
		return LB_NOT_HANDLED;
	now = bpf_ktime_get_ns();
	if (!ct_alive(&key, ct, now))
		return LB_NOT_HANDLED;
	ct_refresh(ct, f, now);
	return translate_and_route(skb, f, ct);
}

#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_CSUM_OFF 2
#define ICMP_HDR_LEN 8
#define IPV4_HDR_LEN 20

/* An ICMP error (destination unreachable, time exceeded, parameter problem)
 * about a packet of a service connection, on its way to the client: it
 * quotes the packet as translated (client or SNAT address -> backend), while
 * the client's socket knows only the packet it sent (client -> frontend). The
 * quote is translated back (its addresses with the quoted header's checksum,
 * its ports with the ICMP checksum), and so is the error's own source when
 * the backend sent it, and its destination when the connection was
 * masqueraded. route: route the result (tc ingress) or hand it on (tc egress
 * toward a pod). Returns LB_NOT_HANDLED for any other ICMP packet. */
static __always_inline int lb_icmp_error(struct __sk_buff *skb, struct flow *f, int route)
{
	__u32 inner_off = f->l4_off + ICMP_HDR_LEN;
	__u32 icmp_csum = f->l4_off + ICMP_CSUM_OFF;
	__u32 inner_csum = inner_off + offsetof(struct iphdr, check);
	struct fibril_ct_key key = {};
	struct fibril_ct_entry *ct;
	struct iphdr inner;
	__u16 ports[2];
	__u8 type;

	if (f->frag != FRAG_NONE || bpf_skb_load_bytes(skb, f->l4_off, &type, sizeof(type)) < 0)
		return LB_NOT_HANDLED;
	if (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED && type != ICMP_PARAMETERPROB)
		return LB_NOT_HANDLED;
	if (bpf_skb_load_bytes(skb, inner_off, &inner, sizeof(inner)) < 0 || inner.ihl != 5 ||
	    (inner.protocol != IPPROTO_TCP && inner.protocol != IPPROTO_UDP) ||
	    bpf_skb_load_bytes(skb, inner_off + IPV4_HDR_LEN, ports, sizeof(ports)) < 0)
		return LB_NOT_HANDLED;

	/* The quoted packet went saddr -> daddr: its connection's REPLY entry
	 * is keyed the other way. */
	key.saddr = inner.daddr;
	key.daddr = inner.saddr;
	key.sport = ports[1];
	key.dport = ports[0];
	key.proto = inner.protocol;
	ct = bpf_map_lookup_elem(&FIBRIL_MAP_CT, &key);
	if (!ct || ct->dir != FIBRIL_CT_REPLY)
		return LB_NOT_HANDLED;

	/* The REPLY entry names the frontend (nat_saddr:nat_sport) and the
	 * client (nat_daddr:nat_dport): the quote becomes client -> frontend. */
	if (inner.saddr != ct->nat_daddr &&
	    (nat_l3_addr_at(skb, inner_csum, inner_off + offsetof(struct iphdr, saddr),
			    inner.saddr, ct->nat_daddr) < 0 ||
	     nat_port(skb, icmp_csum, 0, inner_off + IPV4_HDR_LEN, ports[0], ct->nat_dport) < 0))
		return drop(skb, f, FIBRIL_DROP_REWRITE);
	if (nat_l3_addr_at(skb, inner_csum, inner_off + offsetof(struct iphdr, daddr), inner.daddr,
			   ct->nat_saddr) < 0 ||
	    nat_port(skb, icmp_csum, 0, inner_off + IPV4_HDR_LEN + sizeof(__u16), ports[1],
		     ct->nat_sport) < 0)
		return drop(skb, f, FIBRIL_DROP_REWRITE);
	if (f->saddr == inner.daddr) {
		if (nat_l3_addr(skb, IPV4_SADDR_OFF, f->saddr, ct->nat_saddr) < 0)
			return drop(skb, f, FIBRIL_DROP_REWRITE);
		f->saddr = ct->nat_saddr;
	}
	if (f->daddr != ct->nat_daddr) {
		if (nat_l3_addr(skb, IPV4_DADDR_OFF, f->daddr, ct->nat_daddr) < 0)
			return drop(skb, f, FIBRIL_DROP_REWRITE);
		f->daddr = ct->nat_daddr;
	}
	return route ? route_after_nat(skb, f) : TC_ACT_OK;
}

/* The reverse translation alone, for packets the stack delivers to a pod
 * (a host-network backend's replies): rewritten, not routed. */
static __always_inline int lb_reverse_only(struct __sk_buff *skb, struct flow *f)
{
	struct fibril_ct_key key = {};
	struct fibril_ct_entry *ct;
	__u64 now;

	ct_key_of(f, &key);
	ct = bpf_map_lookup_elem(&FIBRIL_MAP_CT, &key);
	if (!ct || ct->dir != FIBRIL_CT_REPLY)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	if (!ct_alive(&key, ct, now))
		return TC_ACT_OK;
	ct_refresh(ct, f, now);
	if (nat_rewrite(skb, f, ct->nat_saddr, ct->nat_daddr, ct->nat_sport, ct->nat_dport) < 0)
		return drop(skb, f, FIBRIL_DROP_REWRITE);
	return TC_ACT_OK;
}

#endif /* FIBRIL_LIB_LB_H */
