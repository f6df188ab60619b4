/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Per-endpoint traffic counters. Counting never influences the verdict: a
 * failed update (map full) is simply not counted, and the caller's packet
 * continues unchanged.
 */
#ifndef FIBRIL_LIB_METRICS_H
#define FIBRIL_LIB_METRICS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"

/* Pinned by name under the loader's pin dir, so counts survive an agent
 * restart and the agent can read them without loading any program. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FIBRIL_EP_STATS_MAX_ENTRIES);
	__type(key, struct fibril_ep_key);
	__type(value, struct fibril_ep_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_EP_STATS SEC(".maps");

enum fibril_dir {
	FIBRIL_DIR_FROM_POD,
	FIBRIL_DIR_TO_POD,
};

static __always_inline struct fibril_ep_stats *
ep_stats_lookup_or_init(const struct fibril_ep_key *key)
{
	struct fibril_ep_stats *stats;
	struct fibril_ep_stats zero = {};

	stats = bpf_map_lookup_elem(&FIBRIL_MAP_EP_STATS, key);
	if (stats)
		return stats;
	/* BPF_NOEXIST: another CPU may have created the entry meanwhile; either
	 * way a lookup afterwards finds this CPU's slot. */
	bpf_map_update_elem(&FIBRIL_MAP_EP_STATS, key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&FIBRIL_MAP_EP_STATS, key);
}

/* The value is per CPU and tc programs do not migrate mid-run, so plain
 * increments are race-free. */
static __always_inline void ep_count(__u32 ifindex, __u32 len, enum fibril_dir dir)
{
	struct fibril_ep_key key = { .ifindex = ifindex };
	struct fibril_ep_stats *stats = ep_stats_lookup_or_init(&key);

	if (!stats)
		return;
	if (dir == FIBRIL_DIR_FROM_POD) {
		stats->from_pod_packets++;
		stats->from_pod_bytes += len;
	} else {
		stats->to_pod_packets++;
		stats->to_pod_bytes += len;
	}
}

#endif /* FIBRIL_LIB_METRICS_H */
