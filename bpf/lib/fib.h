/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Native routing: the node's FIB picks the next hop (the agent installs a
 * route to each other node's pod CIDR via that node's IP), and the packet
 * leaves the FIB's device directly, without the stack's forwarding path.
 *
 * What each bpf_fib_lookup result does:
 *   SUCCESS       MACs from the FIB, TTL decremented, bpf_redirect
 *                 (forwarded, FIBRIL_FWD_NATIVE)
 *   NO_NEIGH      TTL decremented, bpf_redirect_neigh to the next hop: the
 *                 kernel resolves it and queues the packet meanwhile
 *                 (forwarded, FIBRIL_FWD_NATIVE_NEIGH)
 *   NOT_FWDED     the destination is local to the node: pass to the stack
 *   FRAG_NEEDED   pass to the stack, which fragments or sends ICMP
 *                 "fragmentation needed" so that path MTU discovery works
 *   BLACKHOLE, UNREACHABLE, PROHIBIT, FWD_DISABLED, UNSUPP_LWT
 *                 drop, each with its own reason: the node's own
 *                 configuration says no, and the event names which part
 *   anything else (an error, NO_SRC_ADDR, codes newer than this build)
 *                 drop, FIBRIL_DROP_FIB_ERROR
 */
#ifndef FIBRIL_LIB_FIB_H
#define FIBRIL_LIB_FIB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "events.h"
#include "l3.h"

static __always_inline int fib_forward(struct __sk_buff *skb, struct flow *f)
{
	struct bpf_fib_lookup params = {
		.family = FIBRIL_AF_INET,
		.l4_protocol = f->proto,
		/* tot_len stays 0: the kernel then checks the skb against the
		 * egress MTU itself, which is right for GSO packets too. */
		.ipv4_src = f->saddr,
		.ipv4_dst = f->daddr,
		.ifindex = skb->ingress_ifindex,
	};
	struct bpf_redir_neigh nh = {};
	long rc;

	rc = bpf_fib_lookup(skb, &params, sizeof(params), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		break;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return pass(skb, f, FIBRIL_PASS_FIB_NOT_FWDED);
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return pass(skb, f, FIBRIL_PASS_FIB_FRAG_NEEDED);
	case BPF_FIB_LKUP_RET_BLACKHOLE:
		return drop(skb, f, FIBRIL_DROP_FIB_BLACKHOLE);
	case BPF_FIB_LKUP_RET_UNREACHABLE:
		return drop(skb, f, FIBRIL_DROP_FIB_UNREACHABLE);
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return drop(skb, f, FIBRIL_DROP_FIB_PROHIBIT);
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return drop(skb, f, FIBRIL_DROP_FIB_FWD_DISABLED);
	case BPF_FIB_LKUP_RET_UNSUPP_LWT:
		return drop(skb, f, FIBRIL_DROP_FIB_UNSUPP_LWT);
	default:
		return drop(skb, f, FIBRIL_DROP_FIB_ERROR);
	}

	f->out_ifindex = params.ifindex;
	if (f->ttl <= 1)
		return drop(skb, f, FIBRIL_DROP_TTL_EXCEEDED);
	if (ipv4_dec_ttl(skb, f) < 0)
		return drop(skb, f, FIBRIL_DROP_REWRITE);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (set_macs(skb, params.dmac, params.smac) < 0)
			return drop(skb, f, FIBRIL_DROP_REWRITE);
		return forwarded(skb, f, FIBRIL_FWD_NATIVE, bpf_redirect(params.ifindex, 0));
	}
	/* On return the FIB left the next hop (the gateway, or the destination
	 * itself on a connected route) in ipv4_dst. */
	nh.nh_family = FIBRIL_AF_INET;
	nh.ipv4_nh = params.ipv4_dst;
	return forwarded(skb, f, FIBRIL_FWD_NATIVE_NEIGH,
			 bpf_redirect_neigh(params.ifindex, &nh, sizeof(nh), 0));
}

#endif /* FIBRIL_LIB_FIB_H */
