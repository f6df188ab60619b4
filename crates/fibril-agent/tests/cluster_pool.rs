//! cluster-pool claims against a real API server (the lab's, in process, on loopback): many
//! agents claiming at once get distinct blocks, because they all write one FibrilIPPool
//! object with its resourceVersion as the precondition, and the losers of each race get 409
//! and retry. No root needed: nothing here touches a network namespace.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fibril_agent::pool::{self, PoolClaimError};
use fibril_core::ipam::{ClusterPool, IpamError, NodeName, OverlapCheck, PodCidr};
use fibril_core::kinds::{FibrilIPPool, FibrilNode, DEFAULT_POOL_NAME};
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;

struct Server {
    _dir: tempfile::TempDir,
    api: fibril_apiserver::RunningApiServer,
    url: String,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let api = fibril_apiserver::start(fibril_apiserver::ApiServerConfig {
        data_dir: dir.path().join("api"),
        tcp_addr: Some("127.0.0.1:0".parse().unwrap()),
        unix_socket: None,
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        bookmark_interval: Duration::from_secs(1),
    })
    .await
    .unwrap();
    let url = format!("http://{}", api.tcp_addr.unwrap());
    Server {
        _dir: dir,
        api,
        url,
    }
}

fn node(i: usize) -> NodeName {
    format!("claimer-{i}").parse().unwrap()
}

fn overlaps(a: &PodCidr, b: &PodCidr) -> bool {
    let (a, b) = (a.net(), b.net());
    a.contains(&b.network()) || b.contains(&a.network())
}

/// 16 agents, each with its own client, released at once: 16 distinct, non-overlapping
/// blocks; the pool object records exactly those; and the race really happened (409s were
/// answered and retried), which is what the single shared object is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_claimers_get_distinct_blocks_through_conflicts() {
    const N: usize = 16;
    let s = server().await;
    let pool = ClusterPool::new(vec!["10.200.0.0/16".parse().unwrap()], 24).unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let client = fibril_apiserver::client_for_url(&s.url).unwrap();
        let (pool, barrier) = (pool.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let n = node(i);
            let checks = OverlapCheck::new(n.clone());
            barrier.wait().await;
            let c = pool::claim(&client, &pool, &n, &checks, None).await?;
            pool::record_node(&client, &n, c.block, &c.pool_name)
                .await
                .unwrap();
            Ok::<_, PoolClaimError>((n, c))
        }));
    }
    let mut claims = Vec::new();
    for t in tasks {
        claims.push(t.await.unwrap().unwrap());
    }
    let blocks: BTreeSet<PodCidr> = claims.iter().map(|(_, c)| c.block).collect();
    assert_eq!(
        blocks.len(),
        N,
        "every claimer got its own block: {claims:?}"
    );
    let v: Vec<&PodCidr> = blocks.iter().collect();
    for (i, a) in v.iter().enumerate() {
        assert!(pool.is_block(a), "{a} is a /24 of the pool");
        for b in &v[i + 1..] {
            assert!(!overlaps(a, b), "{a} and {b} overlap");
        }
    }
    let conflicts: u32 = claims.iter().map(|(_, c)| c.conflicts).sum();
    assert!(
        conflicts > 0,
        "16 claimers released at once never conflicted: the race did not happen"
    );
    assert!(claims.iter().all(|(_, c)| c.newly_claimed));
    eprintln!("16 claims, {conflicts} conflicts (409) answered and retried");

    // The pool object is the record: exactly these 16 claims, each by its node.
    let client = fibril_apiserver::client_for_url(&s.url).unwrap();
    let pools: Api<FibrilIPPool> = Api::all(client.clone());
    let obj = pools.get(DEFAULT_POOL_NAME).await.unwrap();
    let state = obj.pool_state().unwrap();
    assert_eq!(state.blocks.len(), N);
    for (n, c) in &claims {
        assert_eq!(state.block_of(n), Some(c.block), "{n}");
    }
    assert_eq!(pool.stats(&state).held, N as u128);
    // So are the FibrilNodes, one per node.
    let fnodes: Api<FibrilNode> = Api::all(client.clone());
    let listed = fnodes.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), N);
    for f in &listed {
        let n: NodeName = f.metadata.name.clone().unwrap().parse().unwrap();
        assert_eq!(f.pod_cidr(), state.block_of(&n));
    }

    // A second claim by a node that holds a block is idempotent: no write.
    let before = obj.metadata.resource_version.clone();
    let again = pool::claim(&client, &pool, &node(3), &OverlapCheck::new(node(3)), None)
        .await
        .unwrap();
    assert!(!again.newly_claimed);
    assert_eq!(Some(again.block), state.block_of(&node(3)));
    let after = pools.get(DEFAULT_POOL_NAME).await.unwrap();
    assert_eq!(after.metadata.resource_version, before);

    // The kind is served like any other: discovery and a dynamic client see it.
    let ar = ApiResource::erase::<FibrilIPPool>(&());
    let dynamic: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let d = dynamic.get(DEFAULT_POOL_NAME).await.unwrap();
    assert_eq!(d.data["spec"]["nodeMaskSize"], 24);
    let disco = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let group = disco.get("fibril.io").expect("fibril.io is discovered");
    let kinds: BTreeSet<String> = group
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    assert!(
        kinds.contains("FibrilIPPool") && kinds.contains("FibrilNode"),
        "{kinds:?}"
    );
    s.api.shutdown().await;
}

/// A stale write is refused by the server itself, whoever sends it.
#[tokio::test]
async fn a_write_with_a_stale_resource_version_gets_409() {
    let s = server().await;
    let client = fibril_apiserver::client_for_url(&s.url).unwrap();
    let pool = ClusterPool::new(vec!["10.200.0.0/16".parse().unwrap()], 24).unwrap();
    pool::claim(&client, &pool, &node(1), &OverlapCheck::new(node(1)), None)
        .await
        .unwrap();
    let pools: Api<FibrilIPPool> = Api::all(client.clone());
    let read = pools.get(DEFAULT_POOL_NAME).await.unwrap();
    pool::claim(&client, &pool, &node(2), &OverlapCheck::new(node(2)), None)
        .await
        .unwrap();
    let c = pool
        .claim_block(
            &read.pool_state().unwrap(),
            &node(3),
            &OverlapCheck::new(node(3)),
        )
        .unwrap();
    let stale = read.with_update(c.update.as_ref().unwrap()).unwrap();
    match pools
        .replace(DEFAULT_POOL_NAME, &Default::default(), &stale)
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
        other => panic!("a stale write must conflict, got {other:?}"),
    }
    s.api.shutdown().await;
}

/// Exhaustion and a pool object for another pool are clear errors naming what they are about.
#[tokio::test]
async fn exhaustion_and_a_foreign_pool_are_refused_clearly() {
    let s = server().await;
    let client = fibril_apiserver::client_for_url(&s.url).unwrap();
    let pool = ClusterPool::new(vec!["10.200.0.0/23".parse().unwrap()], 24).unwrap();
    for i in 0..2 {
        pool::claim(&client, &pool, &node(i), &OverlapCheck::new(node(i)), None)
            .await
            .unwrap();
    }
    let e = pool::claim(&client, &pool, &node(9), &OverlapCheck::new(node(9)), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, PoolClaimError::Ipam(IpamError::PoolExhausted { .. })),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "cluster pool 10.200.0.0/23 has no free /24 block for node claimer-9: 2 blocks, 2 held \
         by nodes, 0 refused by overlap checks"
    );
    // Releasing a node's block frees it for the next claimer.
    assert_eq!(
        pool::release(&client, &node(0)).await.unwrap(),
        Some(vec!["10.200.0.0/24".parse().unwrap()])
    );
    let c = pool::claim(&client, &pool, &node(9), &OverlapCheck::new(node(9)), None)
        .await
        .unwrap();
    assert_eq!(c.block.to_string(), "10.200.0.0/24");

    let other = ClusterPool::new(vec!["10.0.0.0/8".parse().unwrap()], 24).unwrap();
    let e = pool::claim(&client, &other, &node(5), &OverlapCheck::new(node(5)), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("10.200.0.0/23") && e.contains("10.0.0.0/8"),
        "names both pools: {e}"
    );
    s.api.shutdown().await;
}
