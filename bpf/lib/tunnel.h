/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Tunnel routing: the packet, as the pod sent it (TTL decremented), goes to
 * the node's VXLAN device in collect_md ("external") mode with a tunnel key
 * naming the remote node; the device encapsulates it and the node's stack
 * routes the outer packet over the underlay.
 *
 * The VNI carries the source's identity, as Cilium does, so that the
 * receiving node can know it without a lookup (identities fit in 24 bits).
 */
#ifndef FIBRIL_LIB_TUNNEL_H
#define FIBRIL_LIB_TUNNEL_H

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "config.h"
#include "events.h"
#include "l3.h"

#define FIBRIL_VNI_MASK 0xffffff
#define FIBRIL_TUNNEL_TTL 64

static __always_inline int tunnel_forward(struct __sk_buff *skb, struct flow *f,
					  const struct fibril_remote *remote)
{
	struct bpf_tunnel_key key = {};
	struct fibril_endpoint *src;

	f->out_ifindex = CONFIG(tunnel_ifindex);
	if (f->ttl <= 1)
		return drop(skb, f, FIBRIL_DROP_TTL_EXCEEDED);

	src = endpoint_lookup(f->saddr);
	key.tunnel_id = src ? src->identity & FIBRIL_VNI_MASK : 0;
	/* The tunnel key takes host byte order. The local address stays 0: the
	 * stack picks it from its route to the remote node. */
	key.remote_ipv4 = bpf_ntohl(remote->tunnel_endpoint);
	key.tunnel_ttl = FIBRIL_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(skb, f, FIBRIL_DROP_TUNNEL_KEY);
	if (ipv4_dec_ttl(skb, f) < 0)
		return drop(skb, f, FIBRIL_DROP_REWRITE);
	return forwarded(skb, f, FIBRIL_FWD_TUNNEL, bpf_redirect(CONFIG(tunnel_ifindex), 0));
}

#endif /* FIBRIL_LIB_TUNNEL_H */
