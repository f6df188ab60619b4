/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Conntrack of service connections (layout in fibril_shared.h): a FORWARD
 * entry under the client's tuple and a REPLY entry under the backend's, each
 * holding the tuple its packets are rewritten to.
 *
 * Lifetimes: each direction refreshes its own entry's deadline with every
 * packet (TCP: by what that direction has sent, SYN / established /
 * FIN-or-RST); a connection is alive while either entry's deadline has not
 * passed, so a one-way flow keeps its translation. The peer entry is only
 * looked up when an entry's own deadline has passed. The map is an LRU:
 * nothing needs collecting, a dead entry is simply replaced (a masquerade
 * port whose connection is dead is taken again).
 */
#ifndef FIBRIL_LIB_CONNTRACK_H
#define FIBRIL_LIB_CONNTRACK_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "l4.h"

#define NS_PER_SEC 1000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FIBRIL_CT_MAX_ENTRIES);
	__type(key, struct fibril_ct_key);
	__type(value, struct fibril_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_CT SEC(".maps");

static __always_inline void ct_key_of(const struct flow *f, struct fibril_ct_key *k)
{
	k->saddr = f->saddr;
	k->daddr = f->daddr;
	k->sport = f->sport;
	k->dport = f->dport;
	k->proto = f->proto;
}

/* The key of the other direction of the connection of (k, e): the
 * translated tuple, reversed. */
static __always_inline void ct_peer_key(const struct fibril_ct_key *k,
					const struct fibril_ct_entry *e, struct fibril_ct_key *p)
{
	p->saddr = e->nat_daddr;
	p->daddr = e->nat_saddr;
	p->sport = e->nat_dport;
	p->dport = e->nat_sport;
	p->proto = k->proto;
}

static __always_inline __u64 ct_timeout_ns(__u8 proto, __u8 flags)
{
	if (proto != IPPROTO_TCP)
		return FIBRIL_CT_UDP_SECS * NS_PER_SEC;
	if (flags & (FIBRIL_CT_F_FIN | FIBRIL_CT_F_RST))
		return FIBRIL_CT_TCP_CLOSING_SECS * NS_PER_SEC;
	if (flags & FIBRIL_CT_F_ESTABLISHED)
		return FIBRIL_CT_TCP_ESTABLISHED_SECS * NS_PER_SEC;
	return FIBRIL_CT_TCP_SYN_SECS * NS_PER_SEC;
}

/* An entry's flags once it has seen f's packet (sent in its direction). */
static __always_inline __u8 ct_flags_after(__u8 flags, const struct flow *f)
{
	if (f->proto != IPPROTO_TCP)
		return flags;
	if (f->tcp_flags & TCP_FLAG_RST)
		flags |= FIBRIL_CT_F_RST;
	if (f->tcp_flags & TCP_FLAG_FIN)
		flags |= FIBRIL_CT_F_FIN;
	if (!(f->tcp_flags & TCP_FLAG_SYN))
		flags |= FIBRIL_CT_F_ESTABLISHED;
	return flags;
}

static __always_inline void ct_refresh(struct fibril_ct_entry *e, const struct flow *f, __u64 now)
{
	__u8 flags = ct_flags_after(e->flags, f);
	__u64 expires = now + ct_timeout_ns(f->proto, flags);

	/* The deadline is written at most once a second per entry (unless the
	 * state changed), to keep busy connections from writing the shared
	 * value with every packet. */
	if (flags != e->flags || expires > e->expires_ns + NS_PER_SEC) {
		e->flags = flags;
		e->expires_ns = expires;
	}
}

/* Whether the peer entry of (k, e) exists, translates back to k's source,
 * and has not expired. */
static __always_inline int ct_peer_alive(const struct fibril_ct_key *k,
					 const struct fibril_ct_entry *e, __u64 now)
{
	struct fibril_ct_key pk = {};
	struct fibril_ct_entry *p;

	ct_peer_key(k, e, &pk);
	p = bpf_map_lookup_elem(&FIBRIL_MAP_CT, &pk);
	return p && p->dir != e->dir && p->nat_daddr == k->saddr && p->nat_dport == k->sport &&
	       now < p->expires_ns;
}

static __always_inline int ct_alive(const struct fibril_ct_key *k, const struct fibril_ct_entry *e,
				    __u64 now)
{
	return now < e->expires_ns || ct_peer_alive(k, e, now);
}

/* A TCP SYN on a tuple whose previous connection this side was closing
 * (FIN or RST sent): a new connection reusing the ports. */
static __always_inline int ct_reopens(const struct fibril_ct_entry *e, const struct flow *f)
{
	return f->proto == IPPROTO_TCP &&
	       (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
	       (e->flags & (FIBRIL_CT_F_FIN | FIBRIL_CT_F_RST));
}

#endif /* FIBRIL_LIB_CONNTRACK_H */
