//! fibril-netlink
