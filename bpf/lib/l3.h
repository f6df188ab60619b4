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
 * is the high byte of the 16-bit word it shares with the protocol. */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb, const struct flow *f)
{
	__u8 ttl = f->ttl - 1;

	if (bpf_l3_csum_replace(skb, IPV4_CSUM_OFF, bpf_htons((__u16)f->ttl << 8),
				bpf_htons((__u16)ttl << 8), sizeof(__u16)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, IPV4_TTL_OFF, &ttl, sizeof(ttl), 0);
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
