// Rebuild the probes when bpf-linker changes (it is the linker for the BPF
// target), the same trick aya-template uses.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
