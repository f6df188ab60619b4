/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Verdicts and the events that report them.
 *
 * Every program ends in one of drop(), pass() or forwarded(), so that no
 * verdict goes unreported:
 * - drop(): TC_ACT_SHOT; always counts (fibril_drops) and emits an event;
 * - pass(): TC_ACT_OK, the stack carries on; an event when sampled;
 * - forwarded(): the redirect verdict; an event when sampled.
 * Sampling is config.trace_sample (0: off, N: one in N), so that a busy node
 * pays nothing for tracing unless asked to.
 *
 * An event that does not fit in the ring buffer counts in fibril_ev_lost.
 */
#ifndef FIBRIL_LIB_EVENTS_H
#define FIBRIL_LIB_EVENTS_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"
#include "common.h"
#include "config.h"
#include "endpoints.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FIBRIL_EVENTS_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_EVENTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, __FIBRIL_DROP_MAX);
	__type(key, __u32);
	__type(value, struct fibril_drop_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_DROPS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_EVENTS_LOST SEC(".maps");

static __always_inline void emit_event(struct __sk_buff *skb, const struct flow *f,
				       __u8 type, __u8 reason)
{
	struct fibril_event *ev;
	__u16 ports[2] = {};
	__u32 zero = 0;

	if (f->has_ports)
		/* Best effort: a failed read leaves the ports 0. */
		bpf_skb_load_bytes(skb, f->l4_off, ports, sizeof(ports));

	ev = bpf_ringbuf_reserve(&FIBRIL_MAP_EVENTS, sizeof(*ev), 0);
	if (!ev) {
		__u64 *lost = bpf_map_lookup_elem(&FIBRIL_MAP_EVENTS_LOST, &zero);

		if (lost)
			*lost += 1;
		return;
	}
	/* Reserved memory is not zeroed: every field is written. */
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->src_ipv4 = f->saddr;
	ev->dst_ipv4 = f->daddr;
	ev->src_identity = f->saddr ? identity_of(f->saddr) : 0;
	ev->dst_identity = f->dst_identity;
	ev->ifindex = skb->ifindex;
	ev->out_ifindex = f->out_ifindex;
	ev->tunnel_endpoint = f->tunnel_endpoint;
	ev->len = skb->len;
	ev->src_port = ports[0];
	ev->dst_port = ports[1];
	ev->eth_proto = f->eth_proto;
	ev->type = type;
	ev->reason = reason;
	ev->hook = f->hook;
	ev->proto = f->proto;
	ev->policy_dir = f->policy_dir;
	ev->policy_revision = f->policy_revision;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline int trace_sampled(void)
{
	__u32 n = CONFIG(trace_sample);

	if (n == 0)
		return 0;
	return n == 1 || bpf_get_prandom_u32() % n == 0;
}

/* Counts a drop and emits its event; the caller decides the verdict (a
 * service reject answers the packet instead of discarding it). */
static __always_inline void account_drop(struct __sk_buff *skb, const struct flow *f, __u8 reason)
{
	__u32 key = reason;
	struct fibril_drop_stats *stats = bpf_map_lookup_elem(&FIBRIL_MAP_DROPS, &key);

	/* Per CPU, and tc programs do not migrate mid-run: no atomics needed. */
	if (stats) {
		stats->packets++;
		stats->bytes += skb->len;
	}
	emit_event(skb, f, FIBRIL_EVENT_DROPPED, reason);
}

static __always_inline int drop(struct __sk_buff *skb, const struct flow *f, __u8 reason)
{
	account_drop(skb, f, reason);
	return TC_ACT_SHOT;
}

static __always_inline int pass(struct __sk_buff *skb, const struct flow *f, __u8 reason)
{
	if (trace_sampled())
		emit_event(skb, f, FIBRIL_EVENT_PASSED, reason);
	return TC_ACT_OK;
}

/* rc: what the redirect helper returned. Anything but TC_ACT_REDIRECT is a
 * refusal (the helpers return TC_ACT_SHOT on bad arguments): a drop. */
static __always_inline int forwarded(struct __sk_buff *skb, const struct flow *f, __u8 path,
				     long rc)
{
	if (rc != TC_ACT_REDIRECT)
		return drop(skb, f, FIBRIL_DROP_REDIRECT);
	if (trace_sampled())
		emit_event(skb, f, FIBRIL_EVENT_FORWARDED, path);
	return TC_ACT_REDIRECT;
}

#endif /* FIBRIL_LIB_EVENTS_H */
