//! Crash safety of the pod address allocator, modelled: the agent persists each new state
//! (atomically) before it answers CNI, and a crash drops its memory, which it reloads from the
//! last persisted snapshot. Over thousands of random allocate/release/GC/crash sequences:
//! - no address is ever held by two live attachments;
//! - every address handed out is in the persisted state, with its owner;
//! - the network, gateway and broadcast addresses are never handed out;
//! - a retried ADD gets the address it was persisted with.

use std::collections::BTreeMap;
use std::net::IpAddr;

use fibril_core::ipam::{Allocator, IpamError, Owner, PodCidr};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// CNI ADD that completes: allocate, persist, hand out.
    Add(u8),
    /// CNI ADD during which the agent is killed before the persist completes.
    AddCrashBeforePersist(u8),
    /// CNI ADD during which the agent is killed after persisting, before answering.
    AddCrashAfterPersist(u8),
    /// CNI DEL that completes.
    Del(u8),
    /// CNI DEL during which the agent is killed before the persist completes.
    DelCrashBeforePersist(u8),
    /// CNI GC with the runtime's live attachments.
    Gc,
    /// The agent is killed between requests.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let owner = 0u8..20;
    prop_oneof![
        6 => owner.clone().prop_map(Op::Add),
        2 => owner.clone().prop_map(Op::AddCrashBeforePersist),
        2 => owner.clone().prop_map(Op::AddCrashAfterPersist),
        4 => owner.clone().prop_map(Op::Del),
        1 => owner.prop_map(Op::DelCrashBeforePersist),
        1 => Just(Op::Gc),
        1 => Just(Op::Crash),
    ]
}

fn owner(i: u8) -> Owner {
    // Two interfaces for some containers: owners are (container, ifname) pairs.
    let ifname = if i % 5 == 4 { "net1" } else { "eth0" };
    Owner::new(
        format!("c{}", i / 2).parse().unwrap(),
        ifname.parse().unwrap(),
    )
}

/// The agent and the runtime, as far as addresses go.
struct World {
    /// The last snapshot that reached disk.
    disk: String,
    /// The agent's memory.
    mem: Allocator,
    /// Attachments the runtime got an address for, and have not been deleted.
    live: BTreeMap<Owner, IpAddr>,
}

impl World {
    fn new(block: PodCidr) -> World {
        let mem = Allocator::new(block).unwrap();
        World {
            disk: mem.encode(),
            mem,
            live: BTreeMap::new(),
        }
    }

    fn persist(&mut self, state: &Allocator) {
        self.disk = state.encode();
    }

    fn crash(&mut self) {
        self.mem = Allocator::decode(&self.disk).expect("the persisted state always loads");
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Add(i) => {
                let o = owner(i);
                let persisted = self.mem.lookup(&o);
                match self.mem.allocate(&o) {
                    Ok(r) => {
                        if let Some(ip) = persisted {
                            prop_assert_eq!(ip, r.ip, "a retried ADD got another address");
                            prop_assert!(r.existing);
                        }
                        self.persist(&r.state);
                        self.mem = r.state;
                        if let Some(prev) = self.live.insert(o, r.ip) {
                            prop_assert_eq!(prev, r.ip);
                        }
                    }
                    Err(IpamError::BlockExhausted {
                        used, free, total, ..
                    }) => {
                        prop_assert_eq!(free, 0);
                        prop_assert_eq!(used, total);
                        prop_assert!(persisted.is_none());
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::AddCrashBeforePersist(i) => {
                let _lost = self.mem.allocate(&owner(i));
                self.crash();
            }
            Op::AddCrashAfterPersist(i) => {
                if let Ok(r) = self.mem.allocate(&owner(i)) {
                    self.persist(&r.state);
                }
                self.crash();
            }
            Op::Del(i) => {
                let o = owner(i);
                let r = self.mem.release(&o);
                self.persist(&r.state);
                self.mem = r.state;
                self.live.remove(&o);
            }
            Op::DelCrashBeforePersist(i) => {
                let _lost = self.mem.release(&owner(i));
                self.crash();
            }
            Op::Gc => {
                let live = &self.live;
                let r = self.mem.retain(|o| live.contains_key(o));
                for (ip, o) in &r.freed {
                    prop_assert!(!live.contains_key(o), "GC freed {ip} of live {o}");
                }
                self.persist(&r.state);
                self.mem = r.state;
            }
            Op::Crash => self.crash(),
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let on_disk = Allocator::decode(&self.disk).expect("the persisted state always loads");
        prop_assert_eq!(
            &on_disk,
            &self.mem,
            "memory and disk disagree between requests"
        );
        let mut holders: BTreeMap<IpAddr, &Owner> = BTreeMap::new();
        for (o, ip) in &self.live {
            if let Some(other) = holders.insert(*ip, o) {
                return Err(TestCaseError::fail(format!(
                    "{ip} is held by both {other} and {o}"
                )));
            }
            prop_assert_eq!(
                on_disk.lookup(o),
                Some(*ip),
                "{} handed out but not persisted",
                ip
            );
            prop_assert!(on_disk.is_pod_address(*ip));
            prop_assert_ne!(*ip, on_disk.gateway());
        }
        let s = on_disk.stats();
        prop_assert_eq!(s.used, on_disk.allocations().count() as u128);
        prop_assert_eq!(s.used + s.free, s.total);
        Ok(())
    }
}

fn block() -> impl Strategy<Value = PodCidr> {
    prop_oneof![
        Just("10.244.1.0/28".parse().unwrap()),
        Just("10.244.1.0/29".parse().unwrap()),
        Just("10.244.1.0/30".parse().unwrap()),
        Just("fd00:244::/124".parse().unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_address_is_handed_out_twice_across_crashes(
        block in block(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut w = World::new(block);
        for op in &ops {
            w.step(op)?;
        }
    }
}

/// The check above has teeth: an agent that answers before persisting hands the same address
/// to two live pods after one crash.
#[test]
fn answering_before_persisting_would_duplicate_an_address() {
    let block: PodCidr = "10.244.1.0/24".parse().unwrap();
    let mut w = World::new(block);
    let a = w.mem.allocate(&owner(0)).unwrap();
    w.live.insert(owner(0), a.ip); // answered...
    w.crash(); // ...but killed before the write reached disk
    let b = w.mem.allocate(&owner(2)).unwrap();
    w.persist(&b.state);
    w.mem = b.state;
    w.live.insert(owner(2), b.ip);
    assert_eq!(a.ip, b.ip);
    assert!(w.check().is_err());
}
