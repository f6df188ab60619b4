/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Entry points for the host side of a pod's veth.
 *
 * tc ingress on that device sees what the pod sends; tc egress sees what is
 * delivered to it. For now both only count: they must never drop, so they
 * always return TC_ACT_OK.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "metrics.h"

/* aya 0.14 recognises tc programs by the "classifier" section name. */
SEC("classifier")
int FIBRIL_PROG_FROM_POD(struct __sk_buff *skb)
{
	ep_count(skb->ifindex, skb->len, FIBRIL_DIR_FROM_POD);
	return TC_ACT_OK;
}

SEC("classifier")
int FIBRIL_PROG_TO_POD(struct __sk_buff *skb)
{
	ep_count(skb->ifindex, skb->len, FIBRIL_DIR_TO_POD);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
