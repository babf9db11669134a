//! Present so that governance-userspace can name this crate as a build dependency (which makes
//! cargo rebuild the eBPF object whenever governance-common changes). The programs are in main.rs
//! and the modules it declares.
#![no_std]
