/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The load-time configuration of an object (struct fibril_config in the
 * shared header). Each entry file includes this once, so each object has its
 * own copy, filled by the loader (EbpfLoader::override_global) before the
 * programs are verified: .rodata is frozen, so the verifier sees the values as
 * constants and prunes the branches of the other routing modes.
 */
#ifndef FIBRIL_LIB_CONFIG_H
#define FIBRIL_LIB_CONFIG_H

#include "fibril_shared.h"

const volatile struct fibril_config FIBRIL_GLOBAL_CONFIG = {};

#define CONFIG(field) (FIBRIL_GLOBAL_CONFIG.field)

#endif /* FIBRIL_LIB_CONFIG_H */
