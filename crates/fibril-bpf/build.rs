//! Compiles the C datapath (`bpf/*.bpf.c`) with clang into `OUT_DIR`, and generates the
//! Rust side of `bpf/include/fibril_shared.h` with bindgen.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "install clang llvm libbpf-dev linux-libc-dev";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let bpf_dir = manifest_dir.join("../../bpf");
    let bpf_dir = bpf_dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("bpf sources not found at {}: {e}", bpf_dir.display()));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    // A directory: cargo rescans everything under it.
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    check_clang(&clang);

    let arch = BpfArch::of_target();
    let include = bpf_dir.join("include");
    let lib = bpf_dir.join("lib");

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&bpf_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", bpf_dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".bpf.c")))
        .collect();
    sources.sort();
    if sources.is_empty() {
        panic!("no bpf/*.bpf.c sources in {}", bpf_dir.display());
    }
    for src in &sources {
        compile(&clang, &arch, src, &include, &lib, &out_dir);
    }

    generate_bindings(&include.join("fibril_shared.h"), &out_dir);
    generate_skb_bindings(&arch, &out_dir);
}

/// Kernel arch names and the multiarch include dir holding `<asm/…>` headers.
struct BpfArch {
    kernel: &'static str,
    multiarch_include: &'static str,
}

impl BpfArch {
    fn of_target() -> Self {
        let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("set by cargo");
        match arch.as_str() {
            "x86_64" => BpfArch {
                kernel: "x86",
                multiarch_include: "/usr/include/x86_64-linux-gnu",
            },
            "aarch64" => BpfArch {
                kernel: "arm64",
                multiarch_include: "/usr/include/aarch64-linux-gnu",
            },
            other => panic!("fibril-bpf: unsupported target arch {other}: add it to build.rs"),
        }
    }
}

fn check_clang(clang: &str) {
    match Command::new(clang).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{clang} --version` failed ({}): {}\n{INSTALL_HINT}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "fibril-bpf needs clang to compile the eBPF datapath, but `{clang}` could not be run: {e}\n{INSTALL_HINT}"
        ),
    }
}

fn compile(clang: &str, arch: &BpfArch, src: &Path, include: &Path, lib: &Path, out_dir: &Path) {
    let file_name = src
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 source name");
    let object = out_dir.join(file_name.trim_end_matches(".c").to_string() + ".o");
    let output = Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{}", arch.kernel))
        .arg(format!("-I{}", arch.multiarch_include))
        .arg(format!("-I{}", include.display()))
        .arg(format!("-I{}", lib.display()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&object)
        .output()
        .unwrap_or_else(|e| panic!("running {clang}: {e}\n{INSTALL_HINT}"));
    if !output.status.success() {
        panic!(
            "compiling {} failed ({}):\n{}\nIf a header such as <bpf/bpf_helpers.h> or <asm/types.h> is missing: {INSTALL_HINT}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn generate_bindings(header: &Path, out_dir: &Path) {
    let bindings = bindgen::Builder::default()
        .header(header.to_str().expect("utf-8 path"))
        .allowlist_type("fibril_.*")
        .allowlist_var("FIBRIL_.*")
        // Enum constants keep their C names (FIBRIL_DROP_MALFORMED, ...), typed by
        // their enum; the Rust enums over them are in crate::events.
        .prepend_enum_name(false)
        .use_core()
        .derive_default(true)
        .derive_eq(true)
        .derive_hash(true)
        .generate_cstr(true)
        .layout_tests(true)
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen on {} failed: {e}\n(bindgen needs libclang, shipped with clang; {INSTALL_HINT})",
                header.display()
            )
        });
    bindings
        .write_to_file(out_dir.join("fibril_shared.rs"))
        .expect("writing bindings");
}

/// `struct __sk_buff` from `<linux/bpf.h>`: the context BPF_PROG_TEST_RUN takes, so that
/// tests can set the ingress device without hand-copied offsets.
fn generate_skb_bindings(arch: &BpfArch, out_dir: &Path) {
    let bindings = bindgen::Builder::default()
        .header_contents("skb.h", "#include <linux/bpf.h>\n")
        .clang_arg(format!("-I{}", arch.multiarch_include))
        .allowlist_type("__sk_buff")
        .use_core()
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen on <linux/bpf.h> failed: {e}\n{INSTALL_HINT}"));
    bindings
        .write_to_file(out_dir.join("linux_skb.rs"))
        .expect("writing bindings");
}
