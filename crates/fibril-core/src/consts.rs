//! The one place for ports, paths and well-known names used across crates.

/// Port the lab API server listens on at the control-plane address.
pub const API_SERVER_PORT: u16 = 6443;

/// Root of all lab state dirs: `<LAB_STATE_ROOT>/<lab>/`.
/// Overridable with the `FIBRIL_STATE_ROOT` environment variable (tests use it).
pub const LAB_STATE_ROOT: &str = "/var/lib/fibril/labs";
pub const LAB_STATE_ROOT_ENV: &str = "FIBRIL_STATE_ROOT";

/// Where `ip netns` keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Per-netns config files that `ip netns exec` bind-mounts over /etc (resolv.conf).
pub const NETNS_ETC_DIR: &str = "/etc/netns";

/// bpffs mount point and fibril's pin root: maps are pinned under `<BPF_PIN_ROOT>/<node>/`.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/fibril";

/// Debian's reference CNI plugins (containernetworking-plugins).
pub const CNI_REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";
/// CNI spec version fibril writes and speaks.
pub const CNI_SPEC_VERSION: &str = "1.0.0";
/// Name of the bridge-CNI network the lab writes for `--cni bridge`.
pub const BRIDGE_NETWORK_NAME: &str = "fibril-lab-bridge";
/// Bridge device the reference bridge plugin creates on each lab node.
pub const BRIDGE_CNI_DEVICE: &str = "cni0";

/// Interface names inside lab namespaces (local to each netns, so they never collide).
pub const FABRIC_BRIDGE: &str = "br0";
pub const NODE_UPLINK: &str = "eth0";
pub const POD_IFNAME: &str = "eth0";
pub const WORLD_UPLINK: &str = "eth0";
pub const FABRIC_WORLD_LINK: &str = "to-world";

/// The built-in echo image the lab kubelet runs as a process.
pub const ECHO_IMAGE: &str = "fibril/echo";
/// HTTP path on the echo workload that returns the pod name, as agnhost's netexec does.
pub const ECHO_HOSTNAME_PATH: &str = "/hostname";
/// HTTP path on the echo workload that returns the client's `ip:port` as the pod saw it.
pub const ECHO_CLIENTIP_PATH: &str = "/clientip";
/// The built-in NetworkPolicy conformance server (agnhost `serve-hostname`/`porter`'s
/// place): it answers its pod's `<namespace>/<name>` on every TCP, UDP and SCTP port.
pub const NETPOL_SERVER_IMAGE: &str = "fibril/netpol-server";

/// Cluster DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Log filter directives appended everywhere: netlink-packet-route warns on every dump
/// about attributes newer kernels added, which is noise, not a problem.
pub const LOG_QUIET_DEPS: &str = "netlink_packet_route=error";
/// Default log filter of lab components (their logs go to the lab's log dir).
pub const COMPONENT_LOG_FILTER: &str = "info,netlink_packet_route=error";

/// `options ndots:N` in the resolv.conf kubelet writes for dnsPolicy ClusterFirst (and the
/// value `fibril doctor` assumes when a pod sets none).
pub const CLUSTER_DNS_NDOTS: u8 = 5;
/// The built-in cluster DNS image: the lab kubelet runs `fibril lab workload dns` for it.
pub const DNS_IMAGE: &str = "fibril/dns";
/// Namespace of the cluster add-ons (DNS).
pub const KUBE_SYSTEM_NAMESPACE: &str = "kube-system";
/// The cluster DNS Service, as every cluster names it.
pub const KUBE_DNS_SERVICE: &str = "kube-dns";
/// The cluster DNS Deployment the lab runs (CoreDNS's place).
pub const DNS_DEPLOYMENT: &str = "fibril-dns";
/// `k8s-app` label value of the DNS pods and the kube-dns Service's selector.
pub const KUBE_DNS_APP_LABEL: &str = "kube-dns";
/// DNS port, UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// Default TTL of cluster DNS answers, in seconds (CoreDNS's default).
pub const DNS_TTL_SECONDS: u32 = 30;
/// HTTP readiness endpoint of the DNS server (CoreDNS's `ready` plugin port and path):
/// 200 once Services and EndpointSlices are synced.
pub const DNS_READY_PORT: u16 = 8181;
pub const DNS_READY_PATH: &str = "/ready";
