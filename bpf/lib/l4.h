/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The transport view of a packet for the service layer: its ports and TCP
 * flags. A fragmented datagram's later fragments carry no L4 header; they
 * take the ports its first fragment recorded (fibril_frags, keyed by
 * addresses, IP id and protocol), so that the whole datagram is translated
 * alike. A later fragment seen before its first one has no ports and is
 * left to plain routing.
 */
#ifndef FIBRIL_LIB_L4_H
#define FIBRIL_LIB_L4_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"

#define TCP_FLAGS_OFF 13
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FIBRIL_FRAGS_MAX_ENTRIES);
	__type(key, struct fibril_frag_key);
	__type(value, struct fibril_frag_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_FRAGS SEC(".maps");

/* Whether parse_l4 can tell the packet's ports. */
static __always_inline int l4_candidate(const struct flow *f)
{
	return f->has_ports ||
	       (f->frag == FRAG_LATER && (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP));
}

/* Fills the ports (and TCP flags) of an l4_candidate packet. Returns -1 if
 * they are unknown: a truncated L4 header, or a later fragment without its
 * first. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct flow *f)
{
	struct fibril_frag_key fk = {
		.saddr = f->saddr,
		.daddr = f->daddr,
		.id = f->ip_id,
		.proto = f->proto,
	};
	struct fibril_frag_ports ports;
	struct fibril_frag_ports *known;
	__u8 flags = 0;

	if (f->frag == FRAG_LATER) {
		known = bpf_map_lookup_elem(&FIBRIL_MAP_FRAGS, &fk);
		if (!known)
			return -1;
		f->sport = known->sport;
		f->dport = known->dport;
		f->tcp_flags = 0;
		return 0;
	}
	if (f->proto == IPPROTO_TCP) {
		/* Ports to flags in one read: a helper call per packet saved. */
		__u8 tcp[TCP_FLAGS_OFF + 1];

		if (bpf_skb_load_bytes(skb, f->l4_off, tcp, sizeof(tcp)) < 0)
			return -1;
		__builtin_memcpy(&ports, tcp, sizeof(ports));
		flags = tcp[TCP_FLAGS_OFF];
	} else if (bpf_skb_load_bytes(skb, f->l4_off, &ports, sizeof(ports)) < 0) {
		return -1;
	}
	if (f->frag == FRAG_FIRST)
		/* Best effort: without it the later fragments are not
		 * translated. */
		bpf_map_update_elem(&FIBRIL_MAP_FRAGS, &fk, &ports, BPF_ANY);
	f->sport = ports.sport;
	f->dport = ports.dport;
	f->tcp_flags = flags;
	return 0;
}

#endif /* FIBRIL_LIB_L4_H */
