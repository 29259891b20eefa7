//! What crosses the kernel/user boundary: the read-only globals the agent sets at load time,
//! the records the kernel programs write into BPF ring buffers, and the shared map values.
//!
//! Everything here is `#[repr(C)]`, made of fixed-width integers and byte arrays with explicit
//! padding, and checked by `const` assertions on its layout, so both sides agree on every byte.
#![no_std]

pub mod config;
pub mod lost;
pub mod task;
pub mod tcp;
pub mod vma;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are `#[repr(C)]`, `Copy`, made of plain integers with explicit
    // padding, and valid for any bit pattern.
    unsafe impl aya::Pod for crate::config::KernelLayout {}
    unsafe impl aya::Pod for crate::config::PidNamespace {}
    unsafe impl aya::Pod for crate::config::TickClock {}
    unsafe impl aya::Pod for crate::vma::VmaRegister {}
    unsafe impl aya::Pod for crate::task::ProcessExit {}
    unsafe impl aya::Pod for crate::tcp::TupleKey {}
    unsafe impl aya::Pod for crate::tcp::ListenKey {}
    unsafe impl aya::Pod for crate::tcp::PortUse {}
    unsafe impl aya::Pod for crate::tcp::Owned {}
    unsafe impl aya::Pod for crate::task::ThreadSched {}
}
