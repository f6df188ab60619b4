//! fibril-bpf
