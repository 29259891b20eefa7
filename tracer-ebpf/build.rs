//! Rebuild the eBPF object when `bpf-linker` changes: cargo cannot see that the link step
//! depends on it (the same workaround as aya-template's).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
}
