/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The one definition of everything that crosses the C <-> Rust boundary:
 * map key/value structs, map names and sizes, program names.
 *
 * The Rust side (crates/fibril-bpf) is generated from this file with bindgen,
 * including layout tests, so the two can never drift. Keep this header free of
 * kernel-only types: it is also parsed by bindgen in userspace, so it uses only
 * the fixed-width types from <linux/types.h>.
 *
 * Names are declared twice, side by side: once as an identifier (used by the C
 * program to name the ELF symbol) and once as a string (used by the loader).
 * crates/fibril-bpf has a test that checks every string against the compiled ELF.
 */
#ifndef FIBRIL_SHARED_H
#define FIBRIL_SHARED_H

#include <linux/types.h>

/* ---- endpoint counters (bpf/lib/metrics.h) ------------------------------ */

/* Per-endpoint packet/byte counters, keyed by the ifindex of the host side of
 * the pod's veth (ifindexes are per netns; the pin dir is per node and all pod
 * veths of a node live in the node's netns, so the key is unique per map). */
struct fibril_ep_key {
	__u32 ifindex;
};

/* Per-CPU value: userspace sums the CPUs. "from pod" is what the pod sent
 * (tc ingress on the host-side veth), "to pod" what it received (tc egress). */
struct fibril_ep_stats {
	__u64 from_pod_packets;
	__u64 from_pod_bytes;
	__u64 to_pod_packets;
	__u64 to_pod_bytes;
};

/* Map names are at most 15 characters: the kernel keeps only BPF_OBJ_NAME_LEN
 * (16) bytes, and keeping the full name visible in bpftool avoids confusion. */
#define FIBRIL_MAP_EP_STATS fibril_ep_stats
#define FIBRIL_MAP_EP_STATS_NAME "fibril_ep_stats"
/* Pods per node, with headroom for veths that linger while pods churn. */
#define FIBRIL_EP_STATS_MAX_ENTRIES 4096

/* ---- programs of bpf/pod.bpf.c (host side of a pod veth) ---------------- */

/* tc ingress on the host-side veth: packets coming from the pod. */
#define FIBRIL_PROG_FROM_POD fib_from_pod
#define FIBRIL_PROG_FROM_POD_NAME "fib_from_pod"
/* tc egress on the host-side veth: packets going to the pod. */
#define FIBRIL_PROG_TO_POD fib_to_pod
#define FIBRIL_PROG_TO_POD_NAME "fib_to_pod"

#endif /* FIBRIL_SHARED_H */
