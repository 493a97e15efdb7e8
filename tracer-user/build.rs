//! Builds the eBPF crate with the Debian toolchain (see shared/TOOLCHAIN.md)
//! and leaves the object in OUT_DIR for `include_bytes_aligned!`.

use anyhow::Context as _;
use aya_build::{Package, Toolchain, build_ebpf};

fn main() -> anyhow::Result<()> {
    // The BPF target needs `-Z build-std=core`; the Debian rustc-web toolchain
    // ships the std sources but is a stable compiler, so the child build gets
    // RUSTC_BOOTSTRAP=1. The host crates stay on plain stable.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let ebpf = Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    // The wire format is part of the probes too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-common")
    );
    build_ebpf([ebpf], Toolchain::Custom("debian-bpf")).context(
        "building the eBPF probes failed. They need the Debian Rust toolchain linked as \
         `debian-bpf` and bpf-linker 0.13 on PATH: run `cargo xtask bootstrap` (as root)",
    )
}
