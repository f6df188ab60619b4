//! fibril-apiserver
