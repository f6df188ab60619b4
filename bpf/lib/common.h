/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * What every datapath program shares: the parsed view of a packet (struct
 * flow) and the IPv4 parser.
 */
#ifndef FIBRIL_LIB_COMMON_H
#define FIBRIL_LIB_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"

/* <sys/socket.h> is userspace; bpf_fib_lookup wants the family number. */
#define FIBRIL_AF_INET 2

#define IPV4_FRAG_OFFSET_MASK 0x1fff

/* What the programs learn about a packet on its way through; events are
 * built from it. Addresses in network order, as in the packet. */
struct flow {
	__u32 saddr;
	__u32 daddr;
	__u32 dst_identity;
	__u32 out_ifindex;
	__u32 tunnel_endpoint;
	__u16 eth_proto;
	__u16 l4_off;   /* offset of the L4 header from the start of the frame */
	__u8 proto;
	__u8 ttl;
	__u8 hook;      /* enum fibril_hook */
	__u8 has_ports; /* TCP/UDP and not a later fragment: ports at l4_off */
	__u8 frag;      /* enum frag_kind */
	__u16 ip_id;    /* the IPv4 identification, network order */
	/* Filled by parse_l4 (services and conntrack only): from the L4
	 * header, or for a later fragment from its first fragment's. */
	__u16 sport;    /* network order */
	__u16 dport;
	__u8 tcp_flags; /* TCP: the flags byte (FIN 0x01 ... ACK 0x10) */
	/* Set by policy.h on a policy drop, for its event. */
	__u8 policy_dir; /* enum fibril_policy_dir */
	__u32 policy_revision;
};

enum frag_kind {
	FRAG_NONE,
	FRAG_FIRST, /* offset 0, more fragments: has the L4 header */
	FRAG_LATER, /* offset > 0: no L4 header */
};

#define IPV4_MF 0x2000

enum parse_result {
	PARSE_IPV4,
	PARSE_NOT_IPV4,
	PARSE_MALFORMED,
};

/* Fills f from the Ethernet and IPv4 headers. The IPv4 header is made linear
 * if it is not (bpf_skb_pull_data), so that it can be read directly. */
static __always_inline enum parse_result parse_ipv4(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	/* tc always sees the whole L2 header of an Ethernet device's frame;
	 * anything shorter is not a frame fibril routes. */
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_IPV4;
	f->eth_proto = eth->h_proto;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;

	if (data + ETH_HLEN + sizeof(*ip) > data_end) {
		if (skb->len < ETH_HLEN + sizeof(*ip) ||
		    bpf_skb_pull_data(skb, ETH_HLEN + sizeof(*ip)) < 0)
			return PARSE_MALFORMED;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + sizeof(*ip) > data_end)
			return PARSE_MALFORMED;
	}
	ip = data + ETH_HLEN;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;

	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->ttl = ip->ttl;
	f->l4_off = ETH_HLEN + ip->ihl * 4;
	f->has_ports = (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) &&
		       !(ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET_MASK));
	f->ip_id = ip->id;
	if (ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET_MASK))
		f->frag = FRAG_LATER;
	else if (ip->frag_off & bpf_htons(IPV4_MF))
		f->frag = FRAG_FIRST;
	return PARSE_IPV4;
}

#endif /* FIBRIL_LIB_COMMON_H */
