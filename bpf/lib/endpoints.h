/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The two address maps: endpoints (addresses this node delivers to) and the
 * ipcache (longest-prefix match over everything else the agent knows). Both
 * are written by the agent only; the programs only read them.
 */
#ifndef FIBRIL_LIB_ENDPOINTS_H
#define FIBRIL_LIB_ENDPOINTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "fibril_shared.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FIBRIL_ENDPOINTS_MAX_ENTRIES);
	__type(key, struct fibril_endpoint_key);
	__type(value, struct fibril_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_ENDPOINTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FIBRIL_IPCACHE_MAX_ENTRIES);
	__type(key, struct fibril_ipcache_key);
	__type(value, struct fibril_remote);
	/* The kernel requires it of LPM tries. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FIBRIL_MAP_IPCACHE SEC(".maps");

static __always_inline struct fibril_endpoint *endpoint_lookup(__u32 ipv4)
{
	struct fibril_endpoint_key key = { .ipv4 = ipv4 };

	return bpf_map_lookup_elem(&FIBRIL_MAP_ENDPOINTS, &key);
}

static __always_inline struct fibril_remote *ipcache_lookup(__u32 ipv4)
{
	struct fibril_ipcache_key key = { .prefixlen = 32, .ipv4 = ipv4 };

	return bpf_map_lookup_elem(&FIBRIL_MAP_IPCACHE, &key);
}

/* The identity of an address, 0 if unknown. Used for events only, so the
 * common path never pays for the source lookups. */
static __always_inline __u32 identity_of(__u32 ipv4)
{
	struct fibril_endpoint *ep = endpoint_lookup(ipv4);
	struct fibril_remote *remote;

	if (ep)
		return ep->identity;
	remote = ipcache_lookup(ipv4);
	return remote ? remote->identity : 0;
}

#endif /* FIBRIL_LIB_ENDPOINTS_H */
