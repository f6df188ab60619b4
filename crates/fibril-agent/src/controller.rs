//! Start-up and the reconcile loop: cluster state in, IPAM, dataplane, routes, conflist
//! and status out.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use fibril_core::agent_config::{IpamSource, Routing, ValidConfig};
use fibril_core::cidr::contains;
use fibril_core::ipam::{check_node_pod_cidr, PodCidr, PoolStats};
use fibril_core::kinds::{FibrilIPPool, FibrilNode, DEFAULT_POOL_NAME};
use fibril_netlink::{NetNs, Route, VxlanOptions};
use futures::StreamExt as _;
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{reflector, watcher, WatchStreamExt as _};

use crate::agent::{Agent, Readiness};
use crate::dataplane::{BpfDataplane, CountersDataplane, Dataplane, HostRouting};
use crate::endpoint;
use crate::ipam::{node_subnets, route_infos, NodeIpam};
use crate::status::{
    read_refusal, refusal_path, status_socket_path, AgentStatus, ApiStatus, EndpointStatus,
    IpamStatus, PeerStatus, Refusal, ServicesStatus, TunnelStatus,
};

/// The VXLAN device of tunnel mode.
pub const TUNNEL_DEVICE: &str = "fibril_vxlan";
/// Bytes VXLAN over IPv4 adds to a pod's packet.
const VXLAN_OVERHEAD: u32 = 50;
/// How often routes and status are reconciled.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How often peers are probed.
const PROBE_EVERY: Duration = Duration::from_secs(10);
/// Pause before retrying an API call of the cluster-pool claim.
const API_RETRY: Duration = Duration::from_secs(1);

/// Settings that are not part of the agent's configuration file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Do not use the BPF datapath; the text is the cause shown with `Legacy` host routing.
    /// For tests of the strict and degraded paths; a BPF datapath that fails to load has the
    /// same effect with its error as the cause.
    pub force_legacy: Option<String>,
}

/// What the loop knows beyond the [`Agent`]: shown by the status socket.
#[derive(Default)]
struct Runtime {
    api: ApiStatus,
    peers: BTreeMap<String, PeerStatus>,
    degraded: Option<String>,
    conflist: Option<std::path::PathBuf>,
    /// Found while re-adopting endpoints at start.
    startup_problems: Vec<String>,
    /// Drift found by the last reconcile.
    problems: Vec<String>,
    /// Published by the services loop.
    services: Option<ServicesStatus>,
    /// cluster-pool mode: block usage of the pool, as last read.
    pool_stats: Option<PoolStats>,
    /// The last refusal to start (read at start from the state dir), until ready.
    refusal: Option<Refusal>,
    /// Published by the policy loop.
    policy: Option<crate::policy::PolicyStatus>,
}

/// One peer as the loop uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Peer {
    name: String,
    ip: Option<Ipv4Addr>,
    pod_cidr: Option<Ipv4Net>,
}

/// A node as a peer. `blocks` are the nodes' claimed blocks in cluster-pool mode (from
/// their FibrilNodes), `None` in kubernetes mode, where `spec.podCIDR` is the range.
fn peer_of(n: &Node, blocks: Option<&BTreeMap<String, Ipv4Net>>) -> Peer {
    let name = n.metadata.name.clone().unwrap_or_default();
    let pod_cidr = match blocks {
        Some(b) => b.get(&name).copied(),
        None => n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_ref())
            .and_then(|c| c.parse().ok()),
    };
    Peer {
        ip: n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse().ok()),
        name,
        pod_cidr,
    }
}

/// Every node's claimed block, by node name, from the FibrilNode store.
fn claimed_blocks(store: &reflector::Store<FibrilNode>) -> BTreeMap<String, Ipv4Net> {
    store
        .state()
        .iter()
        .filter_map(|f| {
            let name = f.metadata.name.clone()?;
            match f.pod_cidr()?.net() {
                IpNet::V4(n) => Some((name, n)),
                IpNet::V6(_) => None,
            }
        })
        .collect()
}

/// A watch that keeps `writer`'s store current and records API contact in `runtime`.
fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    runtime: Arc<Mutex<Runtime>>,
    what: &'static str,
) -> AbortOnDrop
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let watch = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .for_each(move |r| {
            let rt = runtime.clone();
            async move {
                let mut st = rt.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(_) => {
                        st.api.connected = true;
                        st.api.error = None;
                        st.api.last_contact = Some(now());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "{what} watch");
                        st.api.connected = false;
                        st.api.error = Some(e.to_string());
                    }
                }
            }
        });
    AbortOnDrop(tokio::spawn(watch))
}

/// A kube client for `apiServer`, or the client's own discovery when it is unset.
async fn client_for(config: &ValidConfig) -> anyhow::Result<kube::Client> {
    match &config.api_server {
        Some(url) => {
            let mut c = kube::Config::new(
                url.parse()
                    .with_context(|| format!("apiServer {url:?} is not a valid URL"))?,
            );
            c.default_namespace = "default".into();
            kube::Client::try_from(c).with_context(|| format!("a client for {url}"))
        }
        None => kube::Client::try_default()
            .await
            .context("discovering the API server (no apiServer configured)"),
    }
}

/// Runs the agent for `config` in the network namespace named after the node, until
/// SIGTERM or SIGINT.
pub async fn run(config: ValidConfig) -> anyhow::Result<()> {
    let netns = NetNs::open(config.node_name.as_str()).with_context(|| {
        format!(
            "opening the network namespace of node {} (the agent manages a named netns)",
            config.node_name
        )
    })?;
    let client = client_for(&config).await?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    run_with(config, client, netns, shutdown).await
}

/// [`run`] with the client, the node's namespace and the shutdown signal given.
pub async fn run_with(
    config: ValidConfig,
    client: kube::Client,
    netns: NetNs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_options(config, client, netns, shutdown, RunOptions::default()).await
}

/// [`run_with`] and [`RunOptions`].
pub async fn run_with_options(
    config: ValidConfig,
    client: kube::Client,
    netns: NetNs,
    shutdown: impl Future<Output = ()>,
    options: RunOptions,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.paths.state_dir)
        .with_context(|| format!("creating {}", config.paths.state_dir.display()))?;
    let agent = Arc::new(Agent::new(config.clone(), netns));
    let runtime = Arc::new(Mutex::new(Runtime {
        refusal: read_refusal(&config.paths.state_dir),
        api: ApiStatus {
            server: config
                .api_server
                .clone()
                .unwrap_or_else(|| "(discovered)".into()),
            ..ApiStatus::default()
        },
        ..Runtime::default()
    }));

    let cni = crate::server::bind_root_only(&config.paths.socket_path)?;
    let status_path = status_socket_path(&config.paths.state_dir);
    let status_l = crate::server::bind_root_only(&status_path)?;
    let cni_task = tokio::spawn(crate::server::serve_cni(cni, agent.clone()));
    let status_task = {
        let (agent, runtime) = (agent.clone(), runtime.clone());
        tokio::spawn(crate::server::serve_status(status_l, move || {
            serde_json::to_value(snapshot(&agent, &runtime)).unwrap_or_default()
        }))
    };
    tracing::info!(
        node = %config.node_name,
        socket = %config.paths.socket_path.display(),
        status = %status_path.display(),
        "agent listening (not ready yet)"
    );

    let res = tokio::select! {
        r = main_loop(agent.clone(), runtime.clone(), client, options) => r,
        () = shutdown => {
            tracing::info!("shutting down; the conflist, endpoints and programs stay in place");
            Ok(())
        }
    };
    cni_task.abort();
    status_task.abort();
    let _ = std::fs::remove_file(&config.paths.socket_path);
    let _ = std::fs::remove_file(&status_path);
    if let Err(e) = &res {
        tracing::error!("{e:#}");
    }
    res
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn main_loop(
    agent: Arc<Agent>,
    runtime: Arc<Mutex<Runtime>>,
    client: kube::Client,
    options: RunOptions,
) -> anyhow::Result<()> {
    let config = agent.config().clone();
    let node_name = config.node_name.as_str().to_string();
    let cluster_pool = match &config.ipam {
        IpamSource::ClusterPool(p) => Some(p.clone()),
        IpamSource::Kubernetes => None,
    };
    let (reader, writer) = reflector::store::<Node>();
    let _nodes_watch = spawn_reflector(
        Api::<Node>::all(client.clone()),
        writer,
        runtime.clone(),
        "node",
    );
    // cluster-pool: peers' blocks come from their FibrilNodes, the pool's usage from the
    // pool object.
    let (fnodes, _fnodes_watch, pools, _pools_watch) = if cluster_pool.is_some() {
        let (fr, fw) = reflector::store::<FibrilNode>();
        let (pr, pw) = reflector::store::<FibrilIPPool>();
        (
            Some(fr),
            Some(spawn_reflector(
                Api::<FibrilNode>::all(client.clone()),
                fw,
                runtime.clone(),
                "FibrilNode",
            )),
            Some(pr),
            Some(spawn_reflector(
                Api::<FibrilIPPool>::all(client.clone()),
                pw,
                runtime.clone(),
                "FibrilIPPool",
            )),
        )
    } else {
        (None, None, None, None)
    };
    let current_peers = |state: &[Arc<Node>]| -> Vec<Peer> {
        let blocks = fnodes.as_ref().map(claimed_blocks);
        state.iter().map(|n| peer_of(n, blocks.as_ref())).collect()
    };

    // 1. Our node, with its pod range.
    agent.set_not_ready(format!("waiting for node {node_name} in the API"));
    let (own, peers) = loop {
        let state = reader.state();
        if !state.is_empty() {
            runtime
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .api
                .connected = true;
        }
        let all: Vec<Peer> = current_peers(&state);
        if let Some(own) = all.iter().find(|p| p.name == node_name) {
            let raw = state
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(node_name.as_str()))
                .and_then(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()));
            if matches!(config.ipam, IpamSource::Kubernetes) && raw.is_none() {
                agent.set_not_ready(format!("waiting for node {node_name} to get spec.podCIDR"));
            } else if own.ip.is_none() {
                agent.set_not_ready(format!(
                    "waiting for node {node_name} to report an InternalIP"
                ));
            } else {
                let peers: Vec<Peer> = all
                    .iter()
                    .filter(|p| p.name != node_name)
                    .cloned()
                    .collect();
                break ((own.clone(), raw), peers);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ((own, raw_pod_cidr), peers) = (own, peers);
    let own_ip = own.ip.expect("checked above");

    // 2. IPAM: the pod range, checked against everything on the node (seed 000) and, in
    //    native mode, against the native-routing CIDR (seed 002).
    let (routes, addrs) = blocking(|| -> anyhow::Result<_> {
        Ok((agent.netns().routes()?, agent.netns().addrs()?))
    })?;
    // Routes fibril installed itself are not foreign claims on the address space: routes to
    // peers' pod ranges (kubernetes mode: their spec.podCIDR; cluster-pool mode: any block
    // claimed in the pool, or any block of the pool routed via a cluster node, which covers
    // the route left behind by a peer that departed while this agent was down).
    let mut peer_ranges: Vec<IpNet> = peers
        .iter()
        .filter_map(|p| p.pod_cidr)
        .map(IpNet::V4)
        .collect();
    if let Some(pool) = &cluster_pool {
        agent.set_not_ready("reading the cluster pool");
        let state = retry_api(&agent, "reading the cluster pool", || {
            crate::pool::read_state(&client)
        })
        .await
        .map_err(|e| refuse(&agent, format!("IPAM: {e}")))?;
        peer_ranges.extend(state.iter().flat_map(|s| s.blocks.keys().map(|b| b.net())));
        let node_ips: Vec<Ipv4Addr> = peers.iter().filter_map(|p| p.ip).collect();
        for r in &routes {
            let block = PodCidr::new(IpNet::V4(r.dst)).ok();
            if r.via.is_some_and(|v| node_ips.contains(&v))
                && block.is_some_and(|b| pool.is_block(&b))
            {
                peer_ranges.push(IpNet::V4(r.dst));
            }
        }
    }
    let is_ours = |dev: &str| endpoint::is_pod_veth(dev) || dev == TUNNEL_DEVICE;
    let checks = config.overlap_check(
        route_infos(&routes, is_ours, &peer_ranges),
        node_subnets(&addrs),
    );
    let block = match &config.ipam {
        IpamSource::Kubernetes => check_node_pod_cidr(
            &config.node_name,
            raw_pod_cidr.as_deref(),
            &checks,
            config.native_routing_cidr(),
        )
        .map_err(|e| {
            refuse(
                &agent,
                format!("IPAM refused node {node_name}'s pod CIDR: {e}"),
            )
        })?,
        IpamSource::ClusterPool(pool) => {
            let cidrs: Vec<String> = pool.cidrs().iter().map(|c| c.to_string()).collect();
            pool.refuse_overlaps(&checks).map_err(|e| {
                refuse(
                    &agent,
                    format!("IPAM refused cluster pool {}: {e}", cidrs.join(",")),
                )
            })?;
            let preferred = NodeIpam::persisted_block(&config.paths.state_dir)
                .map_err(|e| refuse(&agent, format!("IPAM state: {e}")))?;
            agent.set_not_ready(format!(
                "claiming a /{} block from cluster pool {}",
                pool.mask(),
                cidrs.join(",")
            ));
            let c = retry_api(&agent, "claiming a block", || {
                crate::pool::claim(&client, pool, &config.node_name, &checks, preferred)
            })
            .await
            .map_err(|e| refuse(&agent, format!("IPAM: {e}")))?;
            for run in &c.refused {
                tracing::warn!(pool = %cidrs.join(","), "{run}");
            }
            tracing::info!(
                block = %c.block,
                pool = %c.pool_name,
                newly_claimed = c.newly_claimed,
                conflicts = c.conflicts,
                held = %c.stats.held,
                free = %c.stats.free,
                "cluster-pool block {}",
                if c.newly_claimed { "claimed" } else { "already held" }
            );
            loop {
                match crate::pool::record_node(&client, &config.node_name, c.block, &c.pool_name)
                    .await
                {
                    Ok(()) => break,
                    Err(e) => {
                        let why = format!(
                            "recording block {} in FibrilNode/{node_name}: {e}; retrying",
                            c.block
                        );
                        tracing::warn!("{why}");
                        agent.set_not_ready(why);
                        tokio::time::sleep(API_RETRY).await;
                    }
                }
            }
            runtime.lock().unwrap_or_else(|p| p.into_inner()).pool_stats = Some(c.stats);
            c.block
        }
    };
    if let Some(native) = config.native_routing_cidr() {
        for p in &peers {
            if let Some(c) = p.pod_cidr {
                if !contains(&native.net(), &IpNet::V4(c)) {
                    return Err(refuse(
                        &agent,
                        format!(
                            "nativeRoutingCidr {native} does not cover node {}'s pod CIDR {c}: its \
                             pods' traffic would be SNATed and bypass policy (seed 002). Make \
                             nativeRoutingCidr cover every pod CIDR",
                            p.name
                        ),
                    ));
                }
            }
        }
    }
    let ipam = NodeIpam::open(&config.paths.state_dir, block)
        .map_err(|e| refuse(&agent, format!("IPAM state: {e}")))?;
    tracing::info!(block = %block, file = %ipam.path().display(), used = %ipam.stats().used, "IPAM ready");

    // 3. Node-level setup the dataplane needs: forwarding, the tunnel device.
    let tunnel_ifindex = blocking(|| -> anyhow::Result<Option<u32>> {
        let ns = agent.netns();
        ns.set_sysctl("net.ipv4.ip_forward", "1")?;
        let Routing::Tunnel { port } = config.routing else {
            return Ok(None);
        };
        ns.ensure_vxlan(&VxlanOptions {
            name: TUNNEL_DEVICE.into(),
            port,
            mtu: None,
        })?;
        ns.set_up(TUNNEL_DEVICE)?;
        let link = ns
            .link(TUNNEL_DEVICE)?
            .with_context(|| format!("{TUNNEL_DEVICE} vanished after its creation"))?;
        Ok(Some(link.index))
    })
    .map_err(|e| refuse(&agent, format!("setting up the node: {e:#}")))?;
    let uplink = addrs
        .iter()
        .find(|a| a.addr.addr() == own_ip)
        .map(|a| a.ifname.clone())
        .ok_or_else(|| {
            refuse(
                &agent,
                format!("no interface in the node's netns carries its InternalIP {own_ip}"),
            )
        })?;

    // Pods in tunnel mode leave room for the outer headers (IPv4 20 + UDP 8 + VXLAN 8 +
    // inner Ethernet 14), so their packets are never fragmented or dropped on the underlay.
    if matches!(config.routing, Routing::Tunnel { .. }) {
        let underlay_mtu = blocking(|| agent.netns().link(&uplink))
            .ok()
            .flatten()
            .and_then(|l| l.mtu)
            .unwrap_or(1500);
        agent.set_default_pod_mtu(Some(underlay_mtu - VXLAN_OVERHEAD));
    }

    // 4. The dataplane, strict about host routing (seed 001).
    let pin_dir = config.bpf_pin_dir();
    let mut dp: Box<dyn Dataplane> =
        blocking(|| select_dataplane(&agent, &pin_dir, own_ip, tunnel_ifindex, &options))
            .map_err(|e| refuse(&agent, e))?;
    let host_routing = dp.host_routing();
    if let HostRouting::Legacy { cause } = &host_routing {
        if !config.allow_degraded {
            return Err(refuse(
                &agent,
                format!(
                    "BPF host routing cannot be used: {cause}. fibril refuses to run with \
                     legacy host routing (seed 001); set allowDegraded: true to run degraded"
                ),
            ));
        }
        let why = format!("legacy host routing: {cause}");
        tracing::warn!(degraded = %why, "running DEGRADED (allowDegraded)");
        runtime.lock().unwrap_or_else(|p| p.into_inner()).degraded = Some(why);
    }
    if matches!(config.routing, Routing::Tunnel { .. }) && !matches!(host_routing, HostRouting::Bpf)
    {
        return Err(refuse(
            &agent,
            format!(
                "routingMode tunnel needs the BPF datapath, and the dataplane in use is {}",
                dp.name()
            ),
        ));
    }
    tracing::info!(dataplane = dp.name(), host_routing = %host_routing, "dataplane loaded");
    blocking(|| -> anyhow::Result<()> {
        let ns = agent.netns();
        dp.attach_underlay(ns, &uplink)?;
        if tunnel_ifindex.is_some() {
            dp.attach_tunnel(ns, TUNNEL_DEVICE)?;
        }
        dp.upsert_remote(block_v4(&block)?, own_ip)?;
        Ok(())
    })
    .map_err(|e| refuse(&agent, format!("attaching the dataplane: {e:#}")))?;

    // 5. Ready: re-adopt endpoints, then let the runtime use fibril.
    let problems = blocking(|| agent.become_ready(ipam, dp)).map_err(|e| anyhow::anyhow!(e))?;
    for p in &problems {
        tracing::warn!("{p}");
    }
    let path = crate::conflist::install(&config.paths.cni_conf_dir, &config.paths.socket_path)
        .context("writing the CNI conflist")?;
    tracing::info!(conflist = %path.display(), "ready: CNI config installed");
    {
        let mut st = runtime.lock().unwrap_or_else(|p| p.into_inner());
        st.conflist = Some(path);
        st.startup_problems = problems;
        st.refusal = None;
    }
    if let Err(e) = crate::persist::remove_durable(&refusal_path(&config.paths.state_dir)) {
        tracing::warn!(error = %e, "cannot remove the record of an earlier refusal");
    }
    let _policy = {
        let rt = runtime.clone();
        AbortOnDrop(tokio::spawn(crate::policy::run(
            agent.clone(),
            client.clone(),
            move |s| rt.lock().unwrap_or_else(|p| p.into_inner()).policy = Some(s),
        )))
    };
    let _services = {
        let rt = runtime.clone();
        AbortOnDrop(tokio::spawn(crate::services::run(
            agent.clone(),
            client,
            own_ip,
            move |s| rt.lock().unwrap_or_else(|p| p.into_inner()).services = Some(s),
        )))
    };

    // 6. Keep routes and status current.
    let mut installed: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    // Routes to peers are recorded (before they are installed) so that uninstall removes
    // exactly fibril's, and so that those of peers that left while the agent was down are
    // removed after a restart.
    let native = matches!(config.routing, Routing::Native { .. });
    let state_dir = config.paths.state_dir.clone();
    let mut leftovers = crate::uninstall::read_routes(&state_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the recorded routes to peers: routes of peers that left while the agent was down stay until uninstall");
        BTreeMap::new()
    });
    let mut recorded = leftovers.clone();
    let mut last_probe: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    loop {
        tick.tick().await;
        let peers: Vec<Peer> = current_peers(&reader.state())
            .into_iter()
            .filter(|p| p.name != node_name)
            .collect();
        let probe = last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
        if probe {
            last_probe = Some(tokio::time::Instant::now());
        }
        // Drift: things changed under the running agent that it does not silently follow.
        let mut drift = Vec::new();
        if let Some(own) = reader
            .state()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node_name.as_str()))
        {
            let now = own.spec.as_ref().and_then(|s| s.pod_cidr.clone());
            if matches!(config.ipam, IpamSource::Kubernetes)
                && now.as_deref() != Some(block.to_string().as_str())
            {
                drift.push(format!(
                    "node.spec.podCIDR is now {} but the agent allocates from {block}: drain \
                     the node and restart the agent",
                    now.as_deref().unwrap_or("(unset)")
                ));
            }
        }
        if let (Some(pool), Some(pools), Some(fnodes)) = (&cluster_pool, &pools, &fnodes) {
            let own = claimed_blocks(fnodes).get(&node_name).copied();
            if own.is_some_and(|b| IpNet::V4(b) != block.net()) {
                drift.push(format!(
                    "FibrilNode/{node_name} now records pod CIDR {} but the agent allocates \
                     from {block}: drain the node and restart the agent",
                    own.map(|b| b.to_string()).unwrap_or_default()
                ));
            }
            if let Some(obj) = pools
                .state()
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(DEFAULT_POOL_NAME))
            {
                match obj.pool_state() {
                    Ok(state) => {
                        if state.block_of(&config.node_name) != Some(block) {
                            drift.push(format!(
                                "FibrilIPPool/{DEFAULT_POOL_NAME} no longer records block \
                                 {block} for this node: another node may be handed it; restart \
                                 the agent to claim it again"
                            ));
                        }
                        let stats = pool.stats(&state);
                        if stats.free == 0 {
                            drift.push(format!(
                                "cluster pool {} has no free /{} block: a new node cannot get \
                                 a pod CIDR (pool exhausted)",
                                obj.spec
                                    .cidrs
                                    .iter()
                                    .map(|c| c.to_string())
                                    .collect::<Vec<_>>()
                                    .join(","),
                                pool.mask()
                            ));
                        }
                        runtime.lock().unwrap_or_else(|p| p.into_inner()).pool_stats = Some(stats);
                    }
                    Err(e) => drift.push(e.to_string()),
                }
            }
        }
        if probe {
            drift.extend(blocking(|| sysctl_drift(agent.netns(), &uplink)));
        }
        if native {
            let mut next = recorded.clone();
            next.extend(
                peers
                    .iter()
                    .filter_map(|p| Some((p.pod_cidr?, p.ip?)))
                    .filter(|(c, _)| {
                        config
                            .native_routing_cidr()
                            .is_none_or(|n| contains(&n.net(), &IpNet::V4(*c)))
                    }),
            );
            record_routes(&state_dir, &mut recorded, next);
        }
        let statuses = blocking(|| reconcile_peers(&agent, &peers, &mut installed, probe));
        if native {
            if !leftovers.is_empty() {
                let ns = agent.netns();
                match blocking(|| ns.routes()) {
                    // The leftovers are kept for the next round.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list the node's routes: stale routes to departed peers are retried next round")
                    }
                    Ok(present) => {
                        for (dst, via) in std::mem::take(&mut leftovers) {
                            let ours_now = installed.contains_key(&dst);
                            let there = present.iter().any(|r| r.dst == dst && r.via == Some(via));
                            if !ours_now && there {
                                match blocking(|| ns.delete_route(dst)) {
                                    Ok(()) => {
                                        tracing::info!(%dst, %via, "removed the route to a peer that left while the agent was down")
                                    }
                                    Err(e) => {
                                        tracing::warn!(%dst, %via, error = %e, "cannot remove a stale route to a departed peer")
                                    }
                                }
                            }
                        }
                    }
                }
            }
            record_routes(&state_dir, &mut recorded, installed.clone());
        }
        let mut st = runtime.lock().unwrap_or_else(|p| p.into_inner());
        for s in statuses {
            let keep = st.peers.get(&s.name).cloned();
            let mut s = s;
            if !probe {
                if let Some(k) = keep {
                    s.reachable = k.reachable;
                    s.rtt_ms = k.rtt_ms;
                }
            }
            st.peers.insert(s.name.clone(), s);
        }
        st.peers.retain(|n, _| peers.iter().any(|p| &p.name == n));
        if probe || !drift.is_empty() {
            for d in drift.iter().filter(|d| !st.problems.contains(d)) {
                tracing::warn!(problem = %d, "drift");
            }
            st.problems = drift;
        }
    }
}

/// Writes the recorded peer routes when they changed (a failure is logged: the routes work
/// anyway, only uninstall would miss them).
fn record_routes(
    state_dir: &std::path::Path,
    recorded: &mut BTreeMap<Ipv4Net, Ipv4Addr>,
    next: BTreeMap<Ipv4Net, Ipv4Addr>,
) {
    if *recorded == next {
        return;
    }
    match crate::uninstall::write_routes(state_dir, &next) {
        Ok(()) => *recorded = next,
        Err(e) => tracing::warn!(error = %e, "cannot record the routes to peers"),
    }
}

/// Runs an API step of the cluster-pool claim until the API server answers: an unreachable
/// API server is not a refusal (the agent says what it waits for, in status and logs);
/// anything the step decides (overlaps, exhaustion, a foreign pool) is returned.
async fn retry_api<T, F, Fut>(
    agent: &Agent,
    what: &str,
    mut step: F,
) -> Result<T, crate::pool::PoolClaimError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::pool::PoolClaimError>>,
{
    loop {
        match step().await {
            Err(e @ crate::pool::PoolClaimError::Api { .. }) => {
                let why = format!("{what}: {e}; retrying");
                tracing::warn!("{why}");
                agent.set_not_ready(why);
                tokio::time::sleep(API_RETRY).await;
            }
            other => return other,
        }
    }
}

/// Reverse-path filtering that would drop pods' asymmetric replies (seed 002): the kernel
/// applies the larger of `all` and the device's value, so strict mode on `all` overrides
/// the agent's per-veth setting.
fn sysctl_drift(ns: &NetNs, uplink: &str) -> Vec<String> {
    let mut out = Vec::new();
    for key in [
        "net.ipv4.conf.all.rp_filter".to_string(),
        format!("net/ipv4/conf/{uplink}/rp_filter"),
    ] {
        if let Ok(v) = ns.sysctl(&key) {
            if v.trim() == "1" {
                out.push(format!(
                    "{key} = 1 (strict reverse-path filtering): asymmetric replies to pods are \
                     dropped (seed 002); set it to 0 or 2"
                ));
            }
        }
    }
    if let Ok(v) = ns.sysctl("net.ipv4.ip_forward") {
        if v.trim() != "1" {
            out.push(
                "net.ipv4.ip_forward was turned off: pods lose every route off the node".into(),
            );
        }
    }
    out
}

fn block_v4(block: &fibril_core::ipam::PodCidr) -> anyhow::Result<Ipv4Net> {
    match block.net() {
        IpNet::V4(n) => Ok(n),
        IpNet::V6(n) => bail!("IPv6 pod CIDR {n} is not supported yet"),
    }
}

/// Logs the refusal, shows it in status (while the process lives) and records it in the
/// state dir (for `fibril status` once the process is gone), returns it as the error.
fn refuse(agent: &Agent, why: String) -> anyhow::Error {
    tracing::error!(refused = %why, "the agent refuses to start");
    agent.set_not_ready(format!("refused: {why}"));
    let config = agent.config();
    let record = Refusal {
        node: config.node_name.to_string(),
        at: now(),
        reason: why.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&record).expect("plain JSON");
    if let Err(e) =
        crate::persist::write_atomic(&refusal_path(&config.paths.state_dir), &bytes, 0o644)
    {
        tracing::warn!(error = %e, "cannot record the refusal in the state dir");
    }
    anyhow::anyhow!(why)
}

/// The dataplane to use: the BPF datapath; the counters with kernel forwarding only when
/// the BPF datapath cannot be used and `allowDegraded` is set (the caller then shows the
/// cause). Never a silent choice: the caller logs and reports which one is in use.
fn select_dataplane(
    agent: &Agent,
    pin_dir: &std::path::Path,
    node_ip: Ipv4Addr,
    tunnel_ifindex: Option<u32>,
    options: &RunOptions,
) -> Result<Box<dyn Dataplane>, String> {
    let config = agent.config();
    let cause = match &options.force_legacy {
        Some(why) => why.clone(),
        None => {
            let routing = match tunnel_ifindex {
                Some(device_ifindex) => fibril_bpf::RoutingMode::Tunnel { device_ifindex },
                None => fibril_bpf::RoutingMode::Native,
            };
            let dp_config = fibril_bpf::DatapathConfig {
                routing,
                node_ip,
                trace_sample: None,
            };
            match BpfDataplane::load(agent.netns(), pin_dir, dp_config) {
                Ok(d) => return Ok(Box::new(d)),
                Err(e) => format!("the BPF datapath cannot be loaded: {e}"),
            }
        }
    };
    if !config.allow_degraded {
        return Err(format!(
            "BPF host routing cannot be used: {cause}. fibril refuses to run with legacy host \
             routing (seed 001); set allowDegraded: true to run degraded"
        ));
    }
    CountersDataplane::load(pin_dir, cause)
        .map(|d| Box::new(d) as Box<dyn Dataplane>)
        .map_err(|e| format!("loading the dataplane: {e}"))
}

/// Routes (native) or ipcache entries (tunnel) to every peer's pod range; a status per peer.
fn reconcile_peers(
    agent: &Agent,
    peers: &[Peer],
    installed: &mut BTreeMap<Ipv4Net, Ipv4Addr>,
    probe: bool,
) -> Vec<PeerStatus> {
    let config = agent.config();
    let ns = agent.netns();
    let mut out = Vec::new();
    let mut want: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    for p in peers {
        let mut s = PeerStatus {
            name: p.name.clone(),
            internal_ip: p.ip,
            pod_cidr: p.pod_cidr.map(|c| c.to_string()),
            ..PeerStatus::default()
        };
        if let (Some(c), Some(ip)) = (p.pod_cidr, p.ip) {
            match config.native_routing_cidr() {
                Some(native) if !contains(&native.net(), &IpNet::V4(c)) => {
                    s.error = Some(format!(
                        "pod CIDR {c} is outside nativeRoutingCidr {native}: not routed"
                    ));
                }
                _ => {
                    want.insert(c, ip);
                }
            }
        }
        if probe {
            if let Some(ip) = p.ip {
                match ns.run(|| crate::probe::ping(ip, Duration::from_secs(1))) {
                    Ok(Ok(rtt)) => {
                        s.reachable = Some(true);
                        s.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                    }
                    Ok(Err(e)) => {
                        s.reachable = Some(false);
                        s.error.get_or_insert(e);
                    }
                    Err(e) => {
                        s.reachable = Some(false);
                        s.error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        out.push(s);
    }
    let native = matches!(config.routing, Routing::Native { .. });
    for (dst, via) in &want {
        if installed.get(dst) == Some(via) {
            continue;
        }
        let mut res: Result<(), String> = Ok(());
        if native {
            res = ns
                .replace_route(&Route {
                    dst: *dst,
                    via: Some(*via),
                    dev: None,
                })
                .map_err(|e| e.to_string());
        }
        if res.is_ok() {
            if let Some(mut dp) = agent.dataplane() {
                res = dp.upsert_remote(*dst, *via).map_err(|e| e.to_string());
            }
        }
        match res {
            Ok(()) => {
                tracing::info!(%dst, %via, "peer pod CIDR programmed");
                installed.insert(*dst, *via);
            }
            Err(e) => {
                tracing::error!(%dst, %via, error = %e, "cannot program the peer's pod CIDR");
                if let Some(s) = out.iter_mut().find(|s| s.pod_cidr == Some(dst.to_string())) {
                    s.error = Some(e);
                }
            }
        }
    }
    let stale: Vec<Ipv4Net> = installed
        .keys()
        .filter(|d| !want.contains_key(d))
        .copied()
        .collect();
    for dst in stale {
        let mut ok = true;
        if native {
            ok &= ns.delete_route(dst).is_ok();
        }
        if let Some(mut dp) = agent.dataplane() {
            ok &= dp.remove_remote(dst).is_ok();
        }
        if ok {
            tracing::info!(%dst, "removed a departed peer's pod CIDR");
            installed.remove(&dst);
        }
    }
    for s in &mut out {
        s.programmed = s
            .pod_cidr
            .as_ref()
            .and_then(|c| c.parse::<Ipv4Net>().ok())
            .is_some_and(|c| installed.contains_key(&c));
    }
    out
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The status document.
fn snapshot(agent: &Agent, runtime: &Mutex<Runtime>) -> AgentStatus {
    let config = agent.config();
    let rt = runtime.lock().unwrap_or_else(|p| p.into_inner());
    let (ready, not_ready_reason) = match agent.readiness() {
        Readiness::Ready => (true, None),
        Readiness::NotReady(r) => (false, Some(r)),
    };
    let (routing_mode, native_routing_cidr, tunnel) = match &config.routing {
        Routing::Native {
            native_routing_cidr,
        } => ("native", Some(native_routing_cidr.to_string()), None),
        Routing::Tunnel { port } => (
            "tunnel",
            None,
            Some(TunnelStatus {
                device: TUNNEL_DEVICE.into(),
                port: *port,
            }),
        ),
    };
    let mut ipam = match &config.ipam {
        IpamSource::Kubernetes => IpamStatus {
            mode: "kubernetes".into(),
            ..IpamStatus::default()
        },
        IpamSource::ClusterPool(p) => IpamStatus {
            mode: "cluster-pool".into(),
            pool: p.cidrs().iter().map(|c| c.to_string()).collect(),
            node_mask: Some(p.mask()),
            pool_object: Some(format!("FibrilIPPool/{DEFAULT_POOL_NAME}")),
            pool_blocks: rt.pool_stats,
            ..IpamStatus::default()
        },
    };
    if let Some(i) = agent.ipam() {
        let s = i.stats();
        ipam.node_cidr = Some(s.block.to_string());
        ipam.used = s.used;
        ipam.free = s.free;
        ipam.total = s.total;
        ipam.exhausted = s.free == 0;
    }
    let mut problems = rt.startup_problems.clone();
    let (dataplane, host_routing, programs, pin_dir, drops) = match agent.dataplane() {
        Some(dp) => (
            dp.name().to_string(),
            serde_json::to_value(dp.host_routing()).unwrap_or_default(),
            dp.programs(),
            Some(dp.pin_dir().to_path_buf()),
            dp.drops().unwrap_or_else(|e| {
                problems.push(format!("drop counters: {e}"));
                Vec::new()
            }),
        ),
        None => (
            "(not loaded)".into(),
            serde_json::json!({"mode": "none", "cause": "the dataplane is not loaded yet"}),
            Vec::new(),
            None,
            Vec::new(),
        ),
    };
    let endpoints = agent
        .endpoint_records()
        .into_values()
        .map(|r| EndpointStatus {
            container_id: r.key.container_id.to_string(),
            ifname: r.key.ifname.to_string(),
            ip: r.ip,
            host_veth: r.host_veth,
            pod: r.pod.map(|p| format!("{}/{}", p.namespace, p.name)),
        })
        .collect();
    problems.extend(rt.problems.iter().cloned());
    if let Some(e) = rt.policy.as_ref().and_then(|s| s.sync_error.as_ref()) {
        problems.push(format!("NetworkPolicy is not enforced: {e}"));
    }
    if let Some(e) = rt.services.as_ref().and_then(|s| s.sync_error.as_ref()) {
        problems.push(format!("service maps: the last sync failed: {e}"));
    }
    if ipam.exhausted {
        problems.push(format!(
            "pod CIDR {} is exhausted: new pods on this node get no address",
            ipam.node_cidr.clone().unwrap_or_default()
        ));
    }
    AgentStatus {
        node: config.node_name.to_string(),
        ready,
        not_ready_reason,
        routing_mode: routing_mode.into(),
        native_routing_cidr,
        tunnel,
        host_routing,
        degraded: rt.degraded.clone(),
        dataplane,
        bpf_pin_dir: pin_dir,
        ipam,
        endpoints,
        programs,
        drops,
        api: rt.api.clone(),
        nodes: rt.peers.values().cloned().collect(),
        conflist: rt.conflist.clone(),
        services: rt.services.clone(),
        policy: rt.policy.clone(),
        problems,
        refusal: if ready { None } else { rt.refusal.clone() },
    }
}
