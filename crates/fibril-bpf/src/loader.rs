//! Loading fibril's BPF objects with their maps pinned in a node's pin dir.
//!
//! Every map is declared `LIBBPF_PIN_BY_NAME` in C, so it lives at `<pin_dir>/<map name>`
//! and every object loaded with the same pin dir shares it: `pod.bpf.o` and
//! `host.bpf.o` share the endpoints, the ipcache and the events, and a restarted agent
//! finds the state the previous one left.

use std::io;
use std::path::Path;

use aya::maps::{MapError, MapInfo};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};

use crate::bpffs::{ensure_bpffs, ensure_pin_dir};
use crate::error::BpfError;
use crate::shared::{self, fibril_config};

/// A compiled `bpf/*.bpf.c`.
#[derive(Clone, Copy)]
pub(crate) struct Object {
    pub name: &'static str,
    pub bytes: &'static [u8],
    /// Its programs, all loaded.
    pub programs: &'static [&'static str],
}

/// The compiled `bpf/pod.bpf.c`.
pub static POD_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod.bpf.o"));
/// The compiled `bpf/host.bpf.c`.
pub static HOST_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/host.bpf.o"));

pub(crate) const POD: Object = Object {
    name: "pod.bpf.o",
    bytes: POD_OBJECT,
    programs: shared::POD_PROGRAM_NAMES,
};
pub(crate) const HOST: Object = Object {
    name: "host.bpf.o",
    bytes: HOST_OBJECT,
    programs: shared::HOST_PROGRAM_NAMES,
};

/// Loads `object` and its programs, reusing the maps pinned in `pin_dir` or pinning new
/// ones there. `config` fills the object's `const volatile` configuration; `None` keeps
/// the zero value (routing mode NONE: counters only). Mounts bpffs if needed.
pub(crate) fn load(
    object: Object,
    pin_dir: &Path,
    config: Option<&fibril_config>,
) -> Result<Ebpf, BpfError> {
    ensure_bpffs()?;
    ensure_pin_dir(pin_dir)?;
    check_pinned_maps(object, pin_dir)?;

    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    if let Some(config) = config {
        loader.override_global(shared::GLOBAL_CONFIG, config, true);
    }
    let mut ebpf = loader.load(object.bytes).map_err(|source| BpfError::Load {
        object: object.name,
        pin_dir: pin_dir.to_path_buf(),
        source: Box::new(source),
    })?;
    for &program in object.programs {
        program_mut(&mut ebpf, object, program)?
            .load()
            .map_err(|source| BpfError::Program { program, source })?;
    }
    Ok(ebpf)
}

pub(crate) fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    object: Object,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram {
            object: object.name,
            program: name,
        })?
        .try_into()
        .map_err(|source| BpfError::Program {
            program: name,
            source,
        })
}

/// aya reuses a pinned map without comparing it to the ELF's definition; a map pinned by
/// an older, different build would otherwise be used silently. This compares each pinned
/// map with the object's definition and refuses a mismatch.
fn check_pinned_maps(object: Object, pin_dir: &Path) -> Result<(), BpfError> {
    let parsed = aya_obj::Object::parse(object.bytes).map_err(|e| BpfError::Load {
        object: object.name,
        pin_dir: pin_dir.to_path_buf(),
        source: Box::new(aya::EbpfError::ParseError(e)),
    })?;
    for (name, def) in &parsed.maps {
        if def.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let path = pin_dir.join(name);
        let info = match MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
                continue
            }
            Err(source) => return Err(BpfError::Map { path, source }),
        };
        let expected = MapShape {
            map_type: Some(def.map_type()),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: def.max_entries(),
            flags: def.map_flags(),
        };
        let found = MapShape {
            map_type: info.map_type().ok().map(|t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        if found != expected {
            return Err(BpfError::IncompatiblePinnedMap {
                path,
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
    }
    Ok(())
}

#[derive(PartialEq)]
struct MapShape {
    /// `enum bpf_map_type`.
    map_type: Option<u32>,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.map_type {
            Some(t) => write!(f, "type {t}")?,
            None => f.write_str("unknown type")?,
        }
        write!(
            f,
            ", key {} B, value {} B, {} entries, flags {:#x}",
            self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use aya_obj::generated::bpf_map_type;

    use super::*;
    use crate::shared::*;

    /// The loaders open maps and programs by the header's names; this checks each
    /// compiled ELF has every one of them, with the header's key/value sizes, so C and
    /// Rust cannot drift apart.
    #[test]
    fn elf_matches_shared_header() {
        for object in [POD, HOST] {
            let obj = aya_obj::Object::parse(object.bytes).expect("object parses");
            for name in MAP_NAMES {
                let map = obj.maps.get(*name).unwrap_or_else(|| {
                    panic!(
                        "map {name} missing from {}; maps: {:?}",
                        object.name,
                        obj.maps.keys().collect::<Vec<_>>()
                    )
                });
                assert_eq!(map.pinning(), aya_obj::maps::PinningType::ByName, "{name}");
            }
            for name in object.programs {
                assert!(
                    obj.programs.contains_key(*name),
                    "program {name} missing from {}; programs: {:?}",
                    object.name,
                    obj.programs.keys().collect::<Vec<_>>()
                );
            }
            let shape = |name: &str| {
                let m = &obj.maps[name];
                (
                    m.map_type(),
                    m.key_size() as usize,
                    m.value_size() as usize,
                    m.max_entries(),
                )
            };
            assert_eq!(
                shape(MAP_EP_STATS),
                (
                    bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH as u32,
                    size_of::<fibril_ep_key>(),
                    size_of::<fibril_ep_stats>(),
                    FIBRIL_EP_STATS_MAX_ENTRIES
                )
            );
            assert_eq!(
                shape(MAP_ENDPOINTS),
                (
                    bpf_map_type::BPF_MAP_TYPE_HASH as u32,
                    size_of::<fibril_endpoint_key>(),
                    size_of::<fibril_endpoint>(),
                    FIBRIL_ENDPOINTS_MAX_ENTRIES
                )
            );
            assert_eq!(
                shape(MAP_IPCACHE),
                (
                    bpf_map_type::BPF_MAP_TYPE_LPM_TRIE as u32,
                    size_of::<fibril_ipcache_key>(),
                    size_of::<fibril_remote>(),
                    FIBRIL_IPCACHE_MAX_ENTRIES
                )
            );
            assert_eq!(
                shape(MAP_EVENTS),
                (
                    bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                    0,
                    0,
                    FIBRIL_EVENTS_RING_BYTES
                )
            );
            assert_eq!(
                shape(MAP_DROPS),
                (
                    bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32,
                    size_of::<u32>(),
                    size_of::<fibril_drop_stats>(),
                    __FIBRIL_DROP_MAX
                )
            );
            assert_eq!(
                shape(MAP_EVENTS_LOST),
                (
                    bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32,
                    size_of::<u32>(),
                    size_of::<u64>(),
                    1
                )
            );
            let hash = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
            let lru = bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32;
            for (name, expected) in [
                (
                    MAP_SERVICES,
                    (
                        hash,
                        size_of::<fibril_svc_key>(),
                        size_of::<fibril_svc>(),
                        FIBRIL_SERVICES_MAX_ENTRIES,
                    ),
                ),
                (
                    MAP_BACKENDS,
                    (
                        hash,
                        size_of::<fibril_backend_key>(),
                        size_of::<fibril_backend>(),
                        FIBRIL_BACKENDS_MAX_ENTRIES,
                    ),
                ),
                (
                    MAP_SVC_MEMBERS,
                    (
                        hash,
                        size_of::<fibril_svc_member_key>(),
                        size_of::<u32>(),
                        FIBRIL_SVC_MEMBERS_MAX_ENTRIES,
                    ),
                ),
                (
                    MAP_AFFINITY,
                    (
                        lru,
                        size_of::<fibril_affinity_key>(),
                        size_of::<fibril_affinity>(),
                        FIBRIL_AFFINITY_MAX_ENTRIES,
                    ),
                ),
                (
                    MAP_SVC_META,
                    (
                        hash,
                        size_of::<u32>(),
                        size_of::<fibril_svc_meta>(),
                        FIBRIL_SVC_META_MAX_ENTRIES,
                    ),
                ),
                (
                    MAP_CT,
                    (
                        lru,
                        size_of::<fibril_ct_key>(),
                        size_of::<fibril_ct_entry>(),
                        FIBRIL_CT_MAX_ENTRIES,
                    ),
                ),
                (
                    MAP_FRAGS,
                    (
                        lru,
                        size_of::<fibril_frag_key>(),
                        size_of::<fibril_frag_ports>(),
                        FIBRIL_FRAGS_MAX_ENTRIES,
                    ),
                ),
            ] {
                assert_eq!(shape(name), expected, "{name} in {}", object.name);
            }
        }
    }

    #[test]
    fn programs_are_classifiers() {
        for object in [POD, HOST] {
            let obj = aya_obj::Object::parse(object.bytes).expect("object parses");
            for name in object.programs {
                let prog = &obj.programs[*name];
                assert!(
                    matches!(prog.section, aya_obj::ProgramSection::SchedClassifier),
                    "{name} is in section {:?}, aya attaches tc programs from \"classifier\"",
                    prog.section
                );
            }
        }
    }

    #[test]
    fn names_fit_the_kernel_name_length() {
        // BPF_OBJ_NAME_LEN is 16 including the NUL; longer names are truncated in bpftool.
        for name in MAP_NAMES.iter().chain(PROGRAM_NAMES) {
            assert!(name.len() < 16, "{name} is longer than 15 characters");
        }
    }

    /// The configuration global exists in each object with the header's size, so the
    /// loader can fill it (the same patching `override_global` does, without a kernel).
    #[test]
    fn config_global_takes_the_header_struct() {
        let config = fibril_config {
            routing_mode: FIBRIL_ROUTING_TUNNEL,
            node_ipv4: 0x0a0b_0c0d,
            tunnel_ifindex: 77,
            trace_sample: 3,
        };
        // SAFETY: fibril_config is repr(C) plain data without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&config as *const fibril_config).cast::<u8>(),
                size_of::<fibril_config>(),
            )
        };
        for object in [POD, HOST] {
            let mut obj = aya_obj::Object::parse(object.bytes).expect("object parses");
            obj.patch_map_data(std::collections::HashMap::from([(
                GLOBAL_CONFIG,
                (bytes, true),
            )]))
            .unwrap_or_else(|e| panic!("{}: {e}", object.name));
            let rodata = obj.maps[".rodata"].data();
            assert!(
                rodata.windows(bytes.len()).any(|w| w == bytes),
                "{}: the configuration landed in .rodata",
                object.name
            );
        }
    }
}
