//! The `fibril` command: parses arguments and calls the libraries.

mod bpf_cmd;
mod connectivity;
mod doctor_cmd;
mod lab_cmd;
mod output;
mod status_cmd;
mod uninstall_cmd;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use fibril_core::agent_config::IpamMode;
use fibril_core::lab::{CniMode, LabName, RoutingMode};

#[derive(Parser)]
#[command(
    name = "fibril",
    version,
    about = "fibril: an eBPF networking dataplane for Kubernetes, and a lab to try it in"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A Kubernetes-shaped cluster of network namespaces on this machine.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Inspect fibril's BPF maps.
    #[command(subcommand)]
    Bpf(BpfCommand),
    /// Check a fibril or Cilium cluster's exported state (or a live lab) for the
    /// misconfigurations behind known incidents.
    Doctor(doctor_cmd::DoctorArgs),
    /// Reachability tests against a live lab.
    #[command(subcommand)]
    Connectivity(connectivity::ConnectivityCommand),
    /// What the fibril agent of each node reports: routing, host routing, IPAM, endpoints,
    /// programs, API connectivity, node reachability. Exits non-zero if one is not ready.
    Status {
        #[command(flatten)]
        lab: LabSel,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Read this status socket instead of a lab's (an agent outside a lab).
        #[arg(long, conflicts_with = "node")]
        socket: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Remove fibril from one node of a lab: stops its agent for good, then removes the CNI
    /// config, the programs, the node's pinned maps, the routes and VXLAN device the agent
    /// created and its state, and gives a cluster-pool block back. Refused while pods on the
    /// node still use fibril's network, unless --force.
    Uninstall {
        #[command(flatten)]
        lab: LabSel,
        /// The node.
        #[arg(long)]
        node: String,
        /// Also when pods still have endpoints: their interfaces are removed too.
        #[arg(long)]
        force: bool,
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    Yaml,
    Wide,
}

#[derive(Args, Clone)]
struct LabSel {
    /// The lab's name ([a-z][a-z0-9]{0,11}).
    #[arg(long, default_value = "fibril", env = "FIBRIL_LAB")]
    name: LabName,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build a lab and wait until every node is Ready.
    Up(UpArgs),
    /// Remove a lab: processes, namespaces, pinned maps and state. Works after crashes.
    Down {
        #[command(flatten)]
        lab: LabSel,
    },
    /// Components, nodes and the API server of a lab.
    Status {
        #[command(flatten)]
        lab: LabSel,
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Create or update the objects in a manifest (YAML or JSON, multi-document).
    Apply {
        #[command(flatten)]
        lab: LabSel,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for objects that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Delete the objects in a manifest.
    Delete {
        #[command(flatten)]
        lab: LabSel,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// List or show objects, like kubectl get.
    Get {
        #[command(flatten)]
        lab: LabSel,
        /// pods, services, nodes, namespaces, endpointslices, deployments, networkpolicies, events,
        /// fibrilippools, fibrilnodes (or short names).
        kind: String,
        #[arg(value_name = "NAME")]
        object: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Run a command in a pod's network namespace (or a node's, or the world host's).
    Exec {
        #[command(flatten)]
        lab: LabSel,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Run in this node's namespace instead of a pod's.
        #[arg(long, conflicts_with_all = ["world", "pod"])]
        node: Option<String>,
        /// Run on the outside host.
        #[arg(long, conflicts_with = "pod")]
        world: bool,
        pod: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a kubeconfig for the lab's API server (reachable from inside the lab).
    Kubeconfig {
        #[command(flatten)]
        lab: LabSel,
    },
    /// Print a component's log (e.g. apiserver, controllers, kubelet/<node>).
    Logs {
        #[command(flatten)]
        lab: LabSel,
        component: String,
    },
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        lab: LabSel,
    },
    #[command(hide = true)]
    Component {
        kind: ComponentArg,
        #[command(flatten)]
        lab: LabSel,
        #[arg(long)]
        node: Option<String>,
    },
    /// Built-in workloads the lab kubelet runs for built-in images.
    #[command(hide = true, subcommand)]
    Workload(WorkloadCommand),
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ComponentArg {
    Apiserver,
    Controllers,
    Kubelet,
    BridgeAgent,
    FibrilAgent,
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// fibril/echo: HTTP + TCP echo on each --tcp port, UDP echo on each --udp port.
    Echo {
        #[arg(long)]
        pod_name: String,
        #[arg(long)]
        pod_namespace: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        tcp: Vec<u16>,
        #[arg(long)]
        udp: Vec<u16>,
    },
    /// fibril/dns: the cluster DNS server (Services and EndpointSlices from the API server).
    Dns {
        /// The API server's unix socket (how the lab's DNS pod reaches it).
        #[arg(long, conflicts_with = "api_url", required_unless_present = "api_url")]
        api_socket: Option<PathBuf>,
        /// The API server's URL, when the pod network reaches it.
        #[arg(long)]
        api_url: Option<String>,
        #[arg(long, default_value_t = fibril_core::consts::DNS_PORT)]
        port: u16,
        #[arg(long, default_value_t = fibril_core::consts::DNS_READY_PORT)]
        ready_port: u16,
        #[arg(long, default_value = fibril_core::consts::CLUSTER_DOMAIN)]
        domain: String,
        /// TTL of answers (and of cached negative answers), in seconds.
        #[arg(long, default_value_t = fibril_core::consts::DNS_TTL_SECONDS)]
        ttl: u32,
    },
    /// fibril/netpol-server: answers the pod's `<namespace>/<name>` on every port.
    NetpolServer {
        #[arg(long)]
        pod_name: String,
        #[arg(long)]
        pod_namespace: String,
        #[arg(long)]
        tcp: Vec<u16>,
        #[arg(long)]
        udp: Vec<u16>,
        #[arg(long)]
        sctp: Vec<u16>,
        /// Leave SCTP ports unserved (logged) when the kernel has no SCTP.
        #[arg(long)]
        skip_unsupported_sctp: bool,
    },
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    lab: LabSel,
    #[arg(long, default_value_t = 3)]
    nodes: u8,
    /// fibril: fibril's agent, CNI plugin and eBPF datapath. bridge: Debian's reference
    /// bridge + host-local plugins, the baseline peer.
    #[arg(long, default_value = "fibril")]
    cni: CniMode,
    #[arg(long, default_value = "native")]
    routing: RoutingMode,
    /// Where fibril's agents get pod ranges: kubernetes (the lab's node IPAM controller sets
    /// spec.podCIDR) or cluster-pool (each agent claims a block of the pool itself).
    #[arg(long, default_value = "kubernetes")]
    ipam: IpamMode,
    /// The cluster's pod range (in cluster-pool mode: the pool).
    #[arg(
        long,
        visible_alias = "cluster-pool-cidr",
        default_value = "10.244.0.0/16"
    )]
    pod_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's pod CIDR block.
    #[arg(long, visible_alias = "cluster-pool-mask", default_value_t = 24)]
    node_mask: u8,
    /// An extra subnet on the world side, routed in every node via the fabric router (a
    /// firewall subnet, as in seed 000). Repeatable.
    #[arg(long = "world-subnet", value_name = "CIDR")]
    world_subnets: Vec<ipnet::Ipv4Net>,
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: ipnet::Ipv4Net,
    #[arg(long, default_value = "172.18.0.0/16")]
    fabric_cidr: ipnet::Ipv4Net,
    #[arg(long, default_value = "203.0.113.0/24")]
    world_cidr: ipnet::Ipv4Net,
    /// How long to wait for every node to be Ready.
    #[arg(long, default_value_t = 90)]
    timeout_secs: u64,
}

#[derive(Subcommand)]
enum BpfCommand {
    /// Per-endpoint packet counters of a lab node, read from its pinned map.
    Counters {
        #[command(flatten)]
        lab: LabSel,
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// The Services a lab node's datapath load-balances (frontends and their backends),
    /// read from its pinned service maps.
    Services {
        #[command(flatten)]
        lab: LabSel,
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("warn,{}", fibril_core::consts::LOG_QUIET_DEPS))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> std::process::ExitCode {
    init_tracing();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Lab(LabCommand::Component {
            kind: ComponentArg::FibrilAgent,
            ..
        })
    ) {
        // Before the runtime's threads: the node agent allocates from one malloc arena.
        fibril_agent::heap::configure();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<std::process::ExitCode> {
    use lab_cmd as l;
    let ok = std::process::ExitCode::SUCCESS;
    match cmd {
        Command::Lab(c) => match c {
            LabCommand::Up(a) => l::up(a).await.map(|_| ok),
            LabCommand::Down { lab } => l::down(&lab.name).map(|_| ok),
            LabCommand::Status { lab, output } => l::status(&lab.name, output).await.map(|_| ok),
            LabCommand::Apply {
                lab,
                file,
                namespace,
            } => l::apply(&lab.name, &file, &namespace).await.map(|_| ok),
            LabCommand::Delete {
                lab,
                file,
                namespace,
            } => l::delete(&lab.name, &file, &namespace).await.map(|_| ok),
            LabCommand::Get {
                lab,
                kind,
                object,
                namespace,
                all_namespaces,
                output,
            } => {
                let ns = (!all_namespaces).then_some(namespace);
                l::get(&lab.name, &kind, object.as_deref(), ns.as_deref(), output)
                    .await
                    .map(|_| ok)
            }
            LabCommand::Exec {
                lab,
                namespace,
                node,
                world,
                pod,
                command,
            } => {
                let target = match (node, world, pod) {
                    (Some(n), _, _) => l::ExecTarget::Node(n),
                    (None, true, _) => l::ExecTarget::World,
                    (None, false, Some(p)) => l::ExecTarget::Pod { namespace, name: p },
                    (None, false, None) => {
                        anyhow::bail!("exec needs a POD, --node NAME or --world")
                    }
                };
                l::exec(&lab.name, target, &command).await
            }
            LabCommand::Kubeconfig { lab } => l::kubeconfig(&lab.name).map(|_| ok),
            LabCommand::Logs { lab, component } => l::logs(&lab.name, &component).map(|_| ok),
            LabCommand::Supervise { lab } => l::supervise(&lab.name).await.map(|_| ok),
            LabCommand::Component { kind, lab, node } => {
                l::component(kind, &lab.name, node).await.map(|_| ok)
            }
            LabCommand::Workload(WorkloadCommand::Echo {
                pod_name,
                pod_namespace,
                node,
                tcp,
                udp,
            }) => fibril_lab::workload::run_echo(fibril_lab::workload::EchoConfig {
                pod_name,
                pod_namespace,
                node_name: node,
                tcp_ports: tcp,
                udp_ports: udp,
            })
            .await
            .map(|_| ok),
            LabCommand::Workload(WorkloadCommand::Dns {
                api_socket,
                api_url,
                port,
                ready_port,
                domain,
                ttl,
            }) => {
                use fibril_lab::workload::{run_dns, ApiEndpoint, DnsConfig};
                let api = match (api_socket, api_url) {
                    (Some(p), _) => ApiEndpoint::Socket(p),
                    (None, Some(u)) => ApiEndpoint::Url(u),
                    (None, None) => anyhow::bail!("--api-socket or --api-url is required"),
                };
                run_dns(DnsConfig {
                    api,
                    port,
                    ready_port,
                    domain,
                    ttl,
                })
                .await
                .map(|_| ok)
            }
            LabCommand::Workload(WorkloadCommand::NetpolServer {
                pod_name,
                pod_namespace,
                tcp,
                udp,
                sctp,
                skip_unsupported_sctp,
            }) => {
                fibril_lab::workload::run_netpol_server(fibril_lab::workload::NetpolServerConfig {
                    pod_name,
                    pod_namespace,
                    tcp,
                    udp,
                    sctp,
                    skip_unsupported_sctp,
                })
                .await
                .map(|_| ok)
            }
        },
        // `--lab` reads namespaces through blocking netlink calls.
        Command::Doctor(args) => tokio::task::spawn_blocking(move || doctor_cmd::run(args)).await?,
        Command::Status {
            lab,
            node,
            socket,
            output,
        } => {
            let target = match socket {
                Some(p) => status_cmd::Target::Socket(p),
                None => status_cmd::Target::Lab {
                    name: lab.name,
                    node,
                },
            };
            tokio::task::spawn_blocking(move || status_cmd::run(target, output)).await?
        }
        Command::Uninstall {
            lab,
            node,
            force,
            output,
        } => uninstall_cmd::run(&lab.name, &node, force, output).await,
        Command::Connectivity(c) => connectivity::run(c).await,
        Command::Bpf(BpfCommand::Counters { lab, node, output }) => {
            bpf_cmd::counters(&lab.name, node.as_deref(), output)
                .await
                .map(|_| ok)
        }
        Command::Bpf(BpfCommand::Services { lab, node, output }) => {
            bpf_cmd::services(&lab.name, node.as_deref(), output).map(|_| ok)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
