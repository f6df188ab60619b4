/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * NetworkPolicy enforcement (maps and key layout in fibril_shared.h; the
 * reference model of the lookups is fibril_core::policy::eval).
 *
 * policy_enforce(skb, f, endpoint, direction) runs where a packet leaves a
 * pod (egress: tc ingress of its veth, after service translation, so that
 * the destination is the backend) and where it enters one (ingress: before
 * bpf_redirect_peer into it, from the pod, underlay or tunnel hooks; and at
 * the veth's tc egress for what the node's stack delivers). Per packet:
 *
 *   1. fibril_pol_ep[endpoint]: no entry, the endpoint is not isolated in
 *      any direction: the packet continues (one hash lookup, nothing else);
 *   2. policy conntrack, keyed by the tuple, this endpoint and direction: a
 *      live entry (this connection was let through here before, in either
 *      direction) lets the packet continue. A reply that the service layer
 *      already translated back (source = the frontend) is looked up under
 *      the backend's tuple, which the service conntrack's FORWARD entry of
 *      the client names;
 *   3. a new connection, in an isolated direction: the peer's ipcache entry
 *      (one LPM lookup), then the endpoint's policy map (LPM) with the
 *      peer's identity, its CIDR identity, then the wildcard identity: the
 *      first hit allows. No hit: dropped, FIBRIL_DROP_POLICY_DENIED, the
 *      event carrying the direction and the endpoint's policy revision;
 *   4. allowed (or the direction is not isolated): two conntrack entries,
 *      the tuple in this direction and the reversed tuple in the other, so
 *      that the rest of the connection and its replies pass at step 2.
 *
 * At most one hash, two LRU, one ipcache and three policy lookups, whatever
 * the number of policies and rules. Connections a policy change would now
 * deny keep going while their conntrack entries live, as in Cilium.
 */
#ifndef FIBRIL_LIB_POLICY_H
#define FIBRIL_LIB_POLICY_H

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "conntrack.h"
#include "endpoints.h"
#include "events.h"

/* Returned by policy_enforce when the packet may continue (no tc verdict
 * has that value). */
#define POLICY_PASS (-3)

#define IPV4_FRAG_OFF_OFF (ETH_HLEN + offsetof(struct iphdr, frag_off))

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FIBRIL_POLICY_EP_MAX_ENTRIES);
	__type(key, struct fibril_policy_ep_key);
	__type(value, struct fibril_policy_ep);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_POLICY_EP SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FIBRIL_POLICY_MAX_ENTRIES);
	__type(key, struct fibril_policy_key);
	__type(value, struct fibril_policy_entry);
	/* The kernel requires it of LPM tries. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_POLICY SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FIBRIL_POLICY_CT_MAX_ENTRIES);
	__type(key, struct fibril_policy_ct_key);
	__type(value, struct fibril_policy_ct);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_POLICY_CT SEC(".maps");

/* The ports policy matches on: TCP and UDP as parsed (0 for a later
 * fragment), SCTP read here (its ports sit where TCP's do), none for
 * anything else (ICMP: only protocol-wide entries match). */
static __always_inline void policy_ports(struct __sk_buff *skb, const struct flow *f,
					 __u16 *sport, __u16 *dport)
{
	__u16 ports[2] = {};
	__u16 frag_off = 0;

	*sport = 0;
	*dport = 0;
	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) {
		*sport = f->sport;
		*dport = f->dport;
		return;
	}
	if (f->proto != IPPROTO_SCTP)
		return;
	if (bpf_skb_load_bytes(skb, IPV4_FRAG_OFF_OFF, &frag_off, sizeof(frag_off)) < 0 ||
	    (frag_off & bpf_htons(IPV4_FRAG_OFFSET_MASK)) ||
	    bpf_skb_load_bytes(skb, f->l4_off, ports, sizeof(ports)) < 0)
		return;
	*sport = ports[0];
	*dport = ports[1];
}

static __always_inline __u8 policy_other_dir(__u8 dir)
{
	return dir == FIBRIL_POLICY_INGRESS ? FIBRIL_POLICY_EGRESS : FIBRIL_POLICY_INGRESS;
}

/* The key of the other direction of k's connection at the same endpoint. */
static __always_inline void pct_reverse(const struct fibril_policy_ct_key *k,
					struct fibril_policy_ct_key *r)
{
	r->saddr = k->daddr;
	r->daddr = k->saddr;
	r->sport = k->dport;
	r->dport = k->sport;
	r->proto = k->proto;
	r->direction = policy_other_dir(k->direction);
	r->ifindex = k->ifindex;
}

/* Alive while either direction's deadline has not passed (a one-way flow
 * keeps its entries). */
static __always_inline int pct_alive(const struct fibril_policy_ct_key *k,
				     const struct fibril_policy_ct *e, __u64 now)
{
	struct fibril_policy_ct_key r = {};
	struct fibril_policy_ct *p;

	if (now < e->expires_ns)
		return 1;
	pct_reverse(k, &r);
	p = bpf_map_lookup_elem(&FIBRIL_MAP_POLICY_CT, &r);
	return p && now < p->expires_ns;
}

static __always_inline void pct_refresh(struct fibril_policy_ct *e, const struct flow *f, __u64 now)
{
	__u8 flags = ct_flags_after(e->flags, f);
	__u64 expires = now + ct_timeout_ns(f->proto, flags);

	/* As in conntrack.h: at most one deadline write a second. */
	if (flags != e->flags || expires > e->expires_ns + NS_PER_SEC) {
		e->flags = flags;
		e->expires_ns = expires;
	}
}

/* A TCP SYN on a tuple this side was closing: a new connection, checked
 * again. */
static __always_inline int pct_reopens(const struct fibril_policy_ct *e, const struct flow *f)
{
	return f->proto == IPPROTO_TCP &&
	       (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
	       (e->flags & (FIBRIL_CT_F_FIN | FIBRIL_CT_F_RST));
}

/* A service reply already translated back (frontend -> client): the entry
 * of the backend's tuple (backend -> client as the backend saw it), found
 * through the service conntrack's FORWARD entry of the client (k reversed).
 * k becomes that tuple when there is one. */
static __always_inline struct fibril_policy_ct *pct_service_reply(struct fibril_policy_ct_key *k,
								   __u64 now)
{
	struct fibril_ct_key sk = {
		.saddr = k->daddr,
		.daddr = k->saddr,
		.sport = k->dport,
		.dport = k->sport,
		.proto = k->proto,
	};
	struct fibril_ct_entry *fwd;

	if (k->proto != IPPROTO_TCP && k->proto != IPPROTO_UDP)
		return NULL;
	fwd = bpf_map_lookup_elem(&FIBRIL_MAP_CT, &sk);
	if (!fwd || fwd->dir != FIBRIL_CT_FORWARD || !ct_alive(&sk, fwd, now))
		return NULL;
	k->saddr = fwd->nat_daddr;
	k->sport = fwd->nat_dport;
	k->daddr = fwd->nat_saddr;
	k->dport = fwd->nat_sport;
	return bpf_map_lookup_elem(&FIBRIL_MAP_POLICY_CT, k);
}

static __always_inline int policy_lookup(__u32 endpoint, const struct fibril_policy_ep *pe,
					 __u8 dir, __u32 identity, __u8 proto, __u16 port)
{
	struct fibril_policy_key key = {
		.prefixlen = FIBRIL_POLICY_PREFIX_FULL,
		.data = {
			.endpoint = endpoint,
			.generation = pe->generation,
			.identity = identity,
			.direction = dir,
			.proto = proto,
			.port = port,
		},
	};

	return bpf_map_lookup_elem(&FIBRIL_MAP_POLICY, &key) != NULL;
}

/* The lookup order of fibril_core::policy::eval: the peer's identity, its
 * CIDR identity, the wildcard. */
static __always_inline int policy_allows(__u32 endpoint, const struct fibril_policy_ep *pe,
					 __u8 dir, const struct fibril_remote *peer, __u8 proto,
					 __u16 port)
{
	if (peer) {
		if (peer->identity &&
		    policy_lookup(endpoint, pe, dir, peer->identity, proto, port))
			return 1;
		if (peer->cidr_identity &&
		    policy_lookup(endpoint, pe, dir, peer->cidr_identity, proto, port))
			return 1;
	}
	return policy_lookup(endpoint, pe, dir, FIBRIL_IDENTITY_ANY, proto, port);
}

/* Enforces the policy of endpoint (a pod veth's ifindex) in direction dir
 * on f's packet. Returns POLICY_PASS, or the verdict of a drop. */
static __always_inline int policy_enforce(struct __sk_buff *skb, struct flow *f, __u32 endpoint,
					  __u8 dir)
{
	struct fibril_policy_ep_key ek = { .ifindex = endpoint };
	struct fibril_policy_ct_key k = {};
	struct fibril_policy_ct_key r = {};
	struct fibril_policy_ct fresh = {};
	struct fibril_policy_ct *ct;
	struct fibril_policy_ep *pe;
	struct fibril_remote *peer;
	__u16 sport, dport;
	__u64 now;
	__u32 isolated;

	pe = bpf_map_lookup_elem(&FIBRIL_MAP_POLICY_EP, &ek);
	if (!pe)
		return POLICY_PASS;

	policy_ports(skb, f, &sport, &dport);
	now = bpf_ktime_get_ns();
	k.saddr = f->saddr;
	k.daddr = f->daddr;
	k.sport = sport;
	k.dport = dport;
	k.proto = f->proto;
	k.direction = dir;
	k.ifindex = endpoint;
	ct = bpf_map_lookup_elem(&FIBRIL_MAP_POLICY_CT, &k);
	if (!ct) {
		r = k;
		ct = pct_service_reply(&r, now);
		if (ct && !pct_reopens(ct, f) && pct_alive(&r, ct, now)) {
			pct_refresh(ct, f, now);
			return POLICY_PASS;
		}
	} else if (!pct_reopens(ct, f) && pct_alive(&k, ct, now)) {
		pct_refresh(ct, f, now);
		return POLICY_PASS;
	}

	isolated = pe->flags & (dir == FIBRIL_POLICY_INGRESS ? FIBRIL_POLICY_F_INGRESS
							     : FIBRIL_POLICY_F_EGRESS);
	if (isolated) {
		peer = ipcache_lookup(dir == FIBRIL_POLICY_INGRESS ? f->saddr : f->daddr);
		if (dir == FIBRIL_POLICY_EGRESS)
			f->dst_identity = peer ? peer->identity : 0;
		else
			f->dst_identity = pe->identity;
		if (!policy_allows(endpoint, pe, dir, peer, f->proto, dport)) {
			f->policy_dir = dir;
			f->policy_revision = pe->revision;
			return drop(skb, f, FIBRIL_DROP_POLICY_DENIED);
		}
	}

	/* Best effort: without the entries, the connection's next packets
	 * are checked again (and a reply in an isolated direction is then
	 * judged as a new connection). */
	fresh.flags = ct_flags_after(0, f);
	fresh.expires_ns = now + ct_timeout_ns(f->proto, fresh.flags);
	bpf_map_update_elem(&FIBRIL_MAP_POLICY_CT, &k, &fresh, BPF_ANY);
	pct_reverse(&k, &r);
	fresh.flags = 0;
	fresh.expires_ns = now + ct_timeout_ns(f->proto, 0);
	bpf_map_update_elem(&FIBRIL_MAP_POLICY_CT, &r, &fresh, BPF_ANY);
	return POLICY_PASS;
}

#endif /* FIBRIL_LIB_POLICY_H */
