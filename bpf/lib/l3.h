/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Routing a packet one hop, as a router does: TTL check and decrement, new
 * MACs; and the last hop, delivery into a pod of this node.
 */
#ifndef FIBRIL_LIB_L3_H
#define FIBRIL_LIB_L3_H

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "events.h"
#include "metrics.h"
#include "policy.h"

#define IPV4_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))
#define IPV4_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))

/* Decrements the TTL (f->ttl, > 1) and updates the header checksum. The TTL
 * is the high byte of the 16-bit word it shares with the protocol, which the
 * checksum follows: TTL, protocol and checksum are written in one store, the
 * checksum updated incrementally (RFC 1624: HC' = ~(~HC + ~m + m')). The one's
 * complement sum does not depend on byte order, so the words are used as they
 * sit in memory. */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb, const struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	__u8 bytes[4]; /* ttl, protocol, check */
	__u16 old_word, new_word, check;
	__u32 sum;

	/* parse_ipv4 made the header linear; a rewrite since may have moved it. */
	if ((void *)(ip + 1) > data_end)
		return -1;
	bytes[0] = f->ttl - 1;
	bytes[1] = ip->protocol;
	__builtin_memcpy(&old_word, &ip->ttl, sizeof(old_word));
	__builtin_memcpy(&new_word, bytes, sizeof(new_word));
	check = ip->check;
	sum = (__u16)~check + (__u16)~old_word + new_word;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	check = ~sum;
	__builtin_memcpy(bytes + 2, &check, sizeof(check));
	return bpf_skb_store_bytes(skb, IPV4_TTL_OFF, bytes, sizeof(bytes), 0);
}

static __always_inline int set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 macs[2 * ETH_ALEN];

	__builtin_memcpy(macs, dst, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, src, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0);
}

/* Delivers into a pod of this node: the packet enters the pod's netns
 * directly at its eth0 ingress (bpf_redirect_peer), skipping the host-side
 * veth's egress and the node's stack. Only valid at tc ingress. */
static __always_inline int deliver_local(struct __sk_buff *skb, struct flow *f,
					 const struct fibril_endpoint *ep)
{
	int verdict;

	f->dst_identity = ep->identity;
	if (ep->flags & FIBRIL_ENDPOINT_F_HOST)
		return pass(skb, f, FIBRIL_PASS_TO_HOST);

	/* The pod's ingress policy (policy.h). */
	verdict = policy_enforce(skb, f, ep->ifindex, FIBRIL_POLICY_INGRESS);
	if (verdict != POLICY_PASS)
		return verdict;

	f->out_ifindex = ep->ifindex;
	if (f->ttl <= 1)
		return drop(skb, f, FIBRIL_DROP_TTL_EXCEEDED);
	if (ipv4_dec_ttl(skb, f) < 0 || set_macs(skb, ep->mac, ep->node_mac) < 0)
		return drop(skb, f, FIBRIL_DROP_REWRITE);
	/* The redirect bypasses fib_to_pod on the veth's egress, which would
	 * otherwise count this packet. */
	ep_count(ep->ifindex, skb->len, FIBRIL_DIR_TO_POD);
	return forwarded(skb, f, FIBRIL_FWD_LOCAL, bpf_redirect_peer(ep->ifindex, 0));
}

#endif /* FIBRIL_LIB_L3_H */
