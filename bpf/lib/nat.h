/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Address and port translation of a parsed TCP/UDP packet, with the IPv4
 * header checksum and the L4 checksum kept valid: incrementally, with the
 * helpers that also keep skb->csum right (CHECKSUM_COMPLETE) and leave the
 * pseudo-header sum of a CHECKSUM_PARTIAL packet (a pod's offloaded
 * segments) for the stack to finish.
 */
#ifndef FIBRIL_LIB_NAT_H
#define FIBRIL_LIB_NAT_H

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "l3.h"
#include "l4.h"

#define IPV4_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IPV4_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6

/* An address at off in an IPv4 header whose checksum is at csum_off (the
 * packet's, or one quoted in an ICMP error). */
static __always_inline int nat_l3_addr_at(struct __sk_buff *skb, __u32 csum_off, __u32 off,
					  __u32 from, __u32 to)
{
	if (bpf_l3_csum_replace(skb, csum_off, from, to, sizeof(to)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

static __always_inline int nat_l3_addr(struct __sk_buff *skb, __u32 off, __u32 from, __u32 to)
{
	return nat_l3_addr_at(skb, IPV4_CSUM_OFF, off, from, to);
}

static __always_inline int nat_addr(struct __sk_buff *skb, __u32 csum_off, __u64 l4_flags,
				    __u32 off, __u32 from, __u32 to)
{
	if (bpf_l4_csum_replace(skb, csum_off, from, to, l4_flags | BPF_F_PSEUDO_HDR | sizeof(to)) < 0)
		return -1;
	return nat_l3_addr(skb, off, from, to);
}

static __always_inline int nat_port(struct __sk_buff *skb, __u32 csum_off, __u64 l4_flags,
				    __u32 off, __u16 from, __u16 to)
{
	if (bpf_l4_csum_replace(skb, csum_off, from, to, l4_flags | sizeof(to)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

/* Rewrites the packet (f: parsed with parse_l4) to the given tuple, in
 * network order; only what differs is touched. f follows the packet. A later
 * fragment has no L4 header: only its addresses change (the first fragment
 * carried the whole datagram's L4 checksum update). */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct flow *f, __u32 saddr,
				       __u32 daddr, __u16 sport, __u16 dport)
{
	__u32 csum_off = f->l4_off + (f->proto == IPPROTO_TCP ? TCP_CSUM_OFF : UDP_CSUM_OFF);
	/* UDP: a zero checksum means none and stays zero; a computed zero is
	 * sent as 0xffff. */
	__u64 l4_flags = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (!f->has_ports) {
		if (saddr != f->saddr) {
			if (nat_l3_addr(skb, IPV4_SADDR_OFF, f->saddr, saddr) < 0)
				return -1;
			f->saddr = saddr;
		}
		if (daddr != f->daddr) {
			if (nat_l3_addr(skb, IPV4_DADDR_OFF, f->daddr, daddr) < 0)
				return -1;
			f->daddr = daddr;
		}
		f->sport = sport;
		f->dport = dport;
		return 0;
	}
	if (saddr != f->saddr) {
		if (nat_addr(skb, csum_off, l4_flags, IPV4_SADDR_OFF, f->saddr, saddr) < 0)
			return -1;
		f->saddr = saddr;
	}
	if (daddr != f->daddr) {
		if (nat_addr(skb, csum_off, l4_flags, IPV4_DADDR_OFF, f->daddr, daddr) < 0)
			return -1;
		f->daddr = daddr;
	}
	if (sport != f->sport) {
		if (nat_port(skb, csum_off, l4_flags, f->l4_off, f->sport, sport) < 0)
			return -1;
		f->sport = sport;
	}
	if (dport != f->dport) {
		if (nat_port(skb, csum_off, l4_flags, f->l4_off + sizeof(__u16), f->dport, dport) < 0)
			return -1;
		f->dport = dport;
	}
	return 0;
}

#endif /* FIBRIL_LIB_NAT_H */
