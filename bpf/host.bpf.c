/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Entry points for the node's own devices: tc ingress on the underlay device
 * (packets from other nodes, native routing) and on the VXLAN device
 * (decapsulated packets from other nodes, tunnel mode).
 *
 *   1. not IPv4: pass;
 *   1b. TCP/UDP: the service layer (lb.h): to an EXTERNAL frontend that is
 *      not a ClusterIP (NodePort, ExternalIP, LoadBalancer): DNAT to a
 *      backend (masqueraded to the node's address if the backend is remote
 *      and the client IP need not be preserved), or reject; replies of
 *      service connections: reverse translation; either way routed by the
 *      new destination;
 *   2. destination is an endpoint of this node: deliver_local (the pod's
 *      ingress policy, policy.h, then bpf_redirect_peer), or pass if it is
 *      the node's own (host) address;
 *   3. destination in this node's own pod range but no endpoint: drop,
 *      FIBRIL_DROP_NO_ENDPOINT (the stack would only send it back out);
 *   4. anything else (the node's own traffic, VXLAN packets still to be
 *      decapsulated): pass.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "config.h"
#include "endpoints.h"
#include "events.h"
#include "l3.h"
#include "lb.h"

static __always_inline int route_to_local(struct __sk_buff *skb, __u8 hook)
{
	struct flow f = { .hook = hook };
	struct fibril_endpoint *ep;
	struct fibril_remote *remote;

	switch (parse_ipv4(skb, &f)) {
	case PARSE_IPV4:
		break;
	case PARSE_NOT_IPV4:
		return pass(skb, &f, FIBRIL_PASS_NOT_IPV4);
	default:
		return drop(skb, &f, FIBRIL_DROP_MALFORMED);
	}

	if (l4_candidate(&f) && parse_l4(skb, &f) == 0) {
		int verdict = lb_handle(skb, &f, 0);

		if (verdict != LB_NOT_HANDLED)
			return verdict;
	} else if (f.proto == IPPROTO_ICMP) {
		int verdict = lb_icmp_error(skb, &f, 1);

		if (verdict != LB_NOT_HANDLED)
			return verdict;
	}

	ep = endpoint_lookup(f.daddr);
	if (ep)
		return deliver_local(skb, &f, ep);

	remote = ipcache_lookup(f.daddr);
	if (remote && remote->tunnel_endpoint && remote->tunnel_endpoint == CONFIG(node_ipv4)) {
		f.dst_identity = remote->identity;
		return drop(skb, &f, FIBRIL_DROP_NO_ENDPOINT);
	}
	return pass(skb, &f, FIBRIL_PASS_UNKNOWN_DST);
}

/* aya 0.14 recognises tc programs by the "classifier" section name. */
SEC("classifier")
int FIBRIL_PROG_FROM_NETDEV(struct __sk_buff *skb)
{
	if (CONFIG(routing_mode) == FIBRIL_ROUTING_NONE)
		return TC_ACT_OK;
	return route_to_local(skb, FIBRIL_HOOK_FROM_NETDEV);
}

SEC("classifier")
int FIBRIL_PROG_FROM_TUNNEL(struct __sk_buff *skb)
{
	if (CONFIG(routing_mode) == FIBRIL_ROUTING_NONE)
		return TC_ACT_OK;
	return route_to_local(skb, FIBRIL_HOOK_FROM_TUNNEL);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
