/// Default pin directory.
pub const DIR: &str = "/sys/fs/bpf/governance";
/// Subdirectory of links (a link pinned keeps its program attached).
pub const LINKS: &str = "links";
/// Subdirectory of maps.
pub const MAPS: &str = "maps";
