//! Rebuild the eBPF object when the linker changes: bpf-linker is not a cargo dependency, so
//! cargo cannot know by itself that a new linker means a new object.
fn main() {
    match which::which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found on PATH; run `cargo xtask setup` to install it"
        ),
    }
}
