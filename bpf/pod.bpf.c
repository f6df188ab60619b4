/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Entry points for the host side of a pod's veth.
 *
 * tc ingress on that device sees what the pod sends, and routes it:
 *   1. count (always, before anything else, so counters never miss a packet);
 *   2. routing mode NONE (counters only): pass, unchanged;
 *   3. not IPv4 (ARP, IPv6): pass, the node's stack answers ARP for the
 *      pods' gateway;
 *   3b. TCP/UDP: the service layer (lb.h): to a service frontend (an
 *      INTERNAL entry first, then EXTERNAL): DNAT to a backend, or reject;
 *      a backend's reply of a service connection: reverse translation;
 *      either way routed by the new destination, after the pod's egress
 *      policy (policy.h) on the translated packet;
 *   3c. the pod's egress policy (policy.h): an isolated endpoint's new
 *      connection that no entry allows is dropped (FIBRIL_DROP_POLICY_DENIED);
 *   4. destination is an endpoint of this node: deliver_local (its ingress
 *      policy, then bpf_redirect_peer), or pass if it is the node's own
 *      (host) address;
 *   5. destination in the ipcache:
 *      - in this node's own pod range (tunnel endpoint = this node) but no
 *        endpoint: drop, FIBRIL_DROP_NO_ENDPOINT;
 *      - tunnel mode: tunnel_forward, or pass if the entry has no tunnel
 *        endpoint;
 *      - native mode: fib_forward;
 *   6. otherwise (the node, the world, entries that only name identities):
 *      pass.
 *
 * tc egress counts what the stack delivers to the pod (packets that fibril
 * redirects into the pod bypass it and are counted at the redirect), and
 * reverse-translates replies of service connections that reach the pod
 * through the stack (a host-network backend's), then applies the pod's
 * ingress policy to what the stack delivers.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "config.h"
#include "endpoints.h"
#include "events.h"
#include "fib.h"
#include "l3.h"
#include "lb.h"
#include "metrics.h"
#include "policy.h"
#include "tunnel.h"

static __always_inline int route_from_pod(struct __sk_buff *skb)
{
	struct flow f = { .hook = FIBRIL_HOOK_FROM_POD };
	struct fibril_endpoint *ep;
	struct fibril_remote *remote;
	int verdict;

	switch (parse_ipv4(skb, &f)) {
	case PARSE_IPV4:
		break;
	case PARSE_NOT_IPV4:
		return pass(skb, &f, FIBRIL_PASS_NOT_IPV4);
	default:
		return drop(skb, &f, FIBRIL_DROP_MALFORMED);
	}

	if (l4_candidate(&f) && parse_l4(skb, &f) == 0) {
		verdict = lb_handle(skb, &f, 1);

		if (verdict != LB_NOT_HANDLED)
			return verdict;
	} else if (f.proto == IPPROTO_ICMP) {
		verdict = lb_icmp_error(skb, &f, 1);

		if (verdict != LB_NOT_HANDLED)
			return verdict;
	}

	verdict = policy_enforce(skb, &f, skb->ifindex, FIBRIL_POLICY_EGRESS);
	if (verdict != POLICY_PASS)
		return verdict;

	ep = endpoint_lookup(f.daddr);
	if (ep)
		return deliver_local(skb, &f, ep);

	remote = ipcache_lookup(f.daddr);
	if (!remote || (remote->flags & FIBRIL_REMOTE_F_NO_ROUTE))
		return pass(skb, &f, FIBRIL_PASS_UNKNOWN_DST);
	f.dst_identity = remote->identity;
	f.tunnel_endpoint = remote->tunnel_endpoint;
	if (remote->tunnel_endpoint && remote->tunnel_endpoint == CONFIG(node_ipv4))
		return drop(skb, &f, FIBRIL_DROP_NO_ENDPOINT);

	if (CONFIG(routing_mode) == FIBRIL_ROUTING_TUNNEL) {
		if (!remote->tunnel_endpoint)
			return pass(skb, &f, FIBRIL_PASS_NO_TUNNEL_ENDPOINT);
		return tunnel_forward(skb, &f, remote);
	}
	return fib_forward(skb, &f);
}

/* aya 0.14 recognises tc programs by the "classifier" section name. */
SEC("classifier")
int FIBRIL_PROG_FROM_POD(struct __sk_buff *skb)
{
	ep_count(skb->ifindex, skb->len, FIBRIL_DIR_FROM_POD);
	if (CONFIG(routing_mode) == FIBRIL_ROUTING_NONE)
		return TC_ACT_OK;
	return route_from_pod(skb);
}

SEC("classifier")
int FIBRIL_PROG_TO_POD(struct __sk_buff *skb)
{
	struct flow f = { .hook = FIBRIL_HOOK_TO_POD };
	int verdict;

	ep_count(skb->ifindex, skb->len, FIBRIL_DIR_TO_POD);
	if (CONFIG(routing_mode) == FIBRIL_ROUTING_NONE)
		return TC_ACT_OK;
	if (parse_ipv4(skb, &f) != PARSE_IPV4)
		return TC_ACT_OK;
	if (f.proto == IPPROTO_ICMP) {
		verdict = lb_icmp_error(skb, &f, 0);
		if (verdict != LB_NOT_HANDLED)
			return verdict;
	} else if (l4_candidate(&f) && parse_l4(skb, &f) == 0) {
		verdict = lb_reverse_only(skb, &f);
		if (verdict != TC_ACT_OK)
			return verdict;
	}
	/* What the stack delivers meets the pod's ingress policy too. */
	verdict = policy_enforce(skb, &f, skb->ifindex, FIBRIL_POLICY_INGRESS);
	return verdict == POLICY_PASS ? TC_ACT_OK : verdict;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
