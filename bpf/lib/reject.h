/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Answering a packet in place, for a service without backends: the client's
 * frame is turned into the answer and sent back out of the device it came
 * in on (for a pod: into the pod; for the underlay: back to the sender's
 * next hop, MACs swapped).
 *   TCP: an RST (RFC 9293 3.10.7.1: with ACK = SEG.SEQ + SEG.LEN for a
 *        segment without ACK, else SEQ = SEG.ACK); an RST is not answered.
 *   UDP: ICMP destination unreachable, port unreachable, quoting the IPv4
 *        header and the first 8 bytes of the datagram.
 * The answer's checksums are computed whole. The packet's ip_summed is left
 * as it was: a pod's CHECKSUM_PARTIAL packet is answered to that same pod,
 * whose stack does not verify local packets.
 */
#ifndef FIBRIL_LIB_REJECT_H
#define FIBRIL_LIB_REJECT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "l4.h"
#include "events.h"

#define REJECT_TTL 64
#define IPV4_DF 0x4000
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
/* An IPv4 header of at most 60 bytes, and 8 bytes of its payload. */
#define ICMP_QUOTE_MAX 68
#define ICMP_QUOTE_MIN 28

struct tcp_hdr {
	__u16 sport;
	__u16 dport;
	__u32 seq;
	__u32 ack;
	__u8 doff_res; /* data offset in the high nibble */
	__u8 flags;
	__u16 window;
	__u16 check;
	__u16 urg;
};

struct icmp_hdr {
	__u8 type;
	__u8 code;
	__u16 check;
	__u32 unused;
};

struct rst_packet {
	struct iphdr ip;
	struct tcp_hdr tcp;
};

struct icmp_packet {
	struct iphdr ip;
	struct icmp_hdr icmp;
	__u8 quote[ICMP_QUOTE_MAX];
};

struct pseudo_hdr {
	__u32 saddr;
	__u32 daddr;
	__u8 zero;
	__u8 proto;
	__u16 len;
};

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline void ipv4_answer_hdr(struct iphdr *ip, __u32 saddr, __u32 daddr, __u8 proto,
					    __u16 tot_len)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(tot_len);
	ip->frag_off = bpf_htons(IPV4_DF);
	ip->ttl = REJECT_TTL;
	ip->protocol = proto;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = 0;
	ip->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
}

static __always_inline int swap_macs(struct __sk_buff *skb)
{
	__u8 macs[2 * ETH_ALEN];
	__u8 swapped[2 * ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return -1;
	__builtin_memcpy(swapped, macs + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(swapped + ETH_ALEN, macs, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0);
}

static __always_inline int build_tcp_rst(struct __sk_buff *skb, const struct flow *f)
{
	struct rst_packet pkt = {};
	struct pseudo_hdr ph = {};
	struct tcp_hdr in;
	__u16 ip_len;
	__u32 seg_len;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, f->l4_off, &in, sizeof(in)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, tot_len), &ip_len,
			       sizeof(ip_len)) < 0)
		return -1;
	/* SEG.LEN: the payload, plus one for each of SYN and FIN. */
	seg_len = bpf_ntohs(ip_len) - (f->l4_off - ETH_HLEN) - (in.doff_res >> 4) * 4;
	if (in.flags & TCP_FLAG_SYN)
		seg_len++;
	if (in.flags & TCP_FLAG_FIN)
		seg_len++;

	pkt.tcp.sport = in.dport;
	pkt.tcp.dport = in.sport;
	if (in.flags & TCP_FLAG_ACK) {
		pkt.tcp.seq = in.ack;
		pkt.tcp.flags = TCP_FLAG_RST;
	} else {
		pkt.tcp.ack = bpf_htonl(bpf_ntohl(in.seq) + seg_len);
		pkt.tcp.flags = TCP_FLAG_RST | TCP_FLAG_ACK;
	}
	pkt.tcp.doff_res = (sizeof(pkt.tcp) / 4) << 4;

	ph.saddr = f->daddr;
	ph.daddr = f->saddr;
	ph.proto = IPPROTO_TCP;
	ph.len = bpf_htons(sizeof(pkt.tcp));
	sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)&pkt.tcp, sizeof(pkt.tcp), (__u32)sum);
	pkt.tcp.check = csum_fold(sum);
	ipv4_answer_hdr(&pkt.ip, f->daddr, f->saddr, IPPROTO_TCP, sizeof(pkt));

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(pkt), 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &pkt, sizeof(pkt), 0);
}

static __always_inline int build_icmp_port_unreach(struct __sk_buff *skb, const struct flow *f)
{
	struct icmp_packet pkt = {};
	__u32 quote = f->l4_off - ETH_HLEN + 8;

	if (quote < ICMP_QUOTE_MIN || quote > ICMP_QUOTE_MAX)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, pkt.quote, quote) < 0)
		return -1;
	pkt.icmp.type = ICMP_DEST_UNREACH;
	pkt.icmp.code = ICMP_PORT_UNREACH;
	pkt.icmp.check = csum_fold(
		bpf_csum_diff(0, 0, (__be32 *)&pkt.icmp, sizeof(pkt.icmp) + quote, 0));
	ipv4_answer_hdr(&pkt.ip, f->daddr, f->saddr, IPPROTO_ICMP,
			sizeof(pkt.ip) + sizeof(pkt.icmp) + quote);

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(pkt.ip) + sizeof(pkt.icmp) + quote, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &pkt, sizeof(pkt.ip) + sizeof(pkt.icmp) + quote,
				   0);
}

/* Rejects f's packet (TCP or UDP with ports parsed): counts it as
 * FIBRIL_DROP_SVC_NO_BACKEND with its event (the client's packet, as sent),
 * then answers it. */
static __always_inline int reject(struct __sk_buff *skb, const struct flow *f)
{
	int rc;

	account_drop(skb, f, FIBRIL_DROP_SVC_NO_BACKEND);
	if (f->proto == IPPROTO_TCP) {
		if (f->tcp_flags & TCP_FLAG_RST)
			return TC_ACT_SHOT;
		rc = build_tcp_rst(skb, f);
	} else {
		rc = build_icmp_port_unreach(skb, f);
	}
	if (rc < 0 || swap_macs(skb) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

#endif /* FIBRIL_LIB_REJECT_H */
