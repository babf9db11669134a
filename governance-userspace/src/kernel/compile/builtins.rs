//! The built-in protections: what agents may never write (the policy, the pins, the cgroup tree
//! outside their own subtree, the kernel's settings, the files the node runs as root) or read
//! (the daemon's secrets), the relaxations a policy may grant, and the table entries all agents
//! share.

use super::*;

/// Paths the agents must never write: the policy directory and the pins (the cgroup tree
/// outside an agent's own subtree is added per agent); and the daemon's secrets, which they
/// must not read either.
#[derive(Clone, Debug, Default)]
pub struct Protect {
    /// cgroup2 mount point.
    pub cgroup_root: PathBuf,
    /// Directories no agent may write below.
    pub no_write: Vec<PathBuf>,
    /// Directories and files no agent may read or write: the audit log, the node CA's key, the
    /// API token.
    pub no_access: Vec<PathBuf>,
    /// Where symlinks in /etc lead outside the system files ([`system_link_targets`]): system
    /// files too, unless relaxed.
    pub system_links: Vec<PathBuf>,
}

/// How many symlink targets [`system_link_targets`] gives at most.
const MAX_SYSTEM_LINKS: usize = 1024;
/// How many entries of /etc [`system_link_targets`] reads at most (a large /etc has a few
/// thousand).
const MAX_ETC_ENTRIES: usize = 100_000;

/// The files and directories symlinks in `etc` (at any depth, never through a symlinked
/// directory) lead to outside the system files and the kernel's virtual filesystems: the node
/// reads them as its configuration under /etc's name, while a write opens them under their
/// own (`/etc/resolv.conf` → `/run/resolvconf/resolv.conf`, NetworkManager's, netconfig's: the
/// resolver of every process on the node, the policy proxy's among them; a unit linked in with
/// `systemctl link`, a static pod's manifest, a site's configuration: red team round 26).
/// Each resolved as the kernel resolves it, or, where the target does not exist yet, its
/// directory resolved and its name (an agent that made it would configure the node). The root
/// directory is never one (it would refuse every write). Past [`MAX_SYSTEM_LINKS`] targets or
/// [`MAX_ETC_ENTRIES`] entries read, the rest is left (said in the log).
pub fn system_link_targets(etc: &Path) -> Vec<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut dirs = vec![etc.to_path_buf()];
    let mut read = 0usize;
    'walk: while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            read += 1;
            if read > MAX_ETC_ENTRIES || out.len() == MAX_SYSTEM_LINKS {
                tracing::warn!(
                    entries = read,
                    targets = out.len(),
                    "/etc is larger than the symlink scan reads: the targets of the links past it are not protected as system files"
                );
                break 'walk;
            }
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                dirs.push(e.path());
                continue;
            }
            if !kind.is_symlink() {
                continue;
            }
            let Some(target) = link_target(&e.path()) else {
                continue;
            };
            let virtual_fs = ["/proc", "/sys"].iter().any(|v| target.starts_with(v))
                || (target.starts_with("/dev") && !target.starts_with("/dev/shm"));
            if target.parent().is_none()
                || virtual_fs
                || system_files().any(|s| target.starts_with(s))
                || KERNEL_SETTINGS.iter().any(|s| target.starts_with(s))
            {
                continue;
            }
            out.insert(target);
        }
    }
    out.into_iter().collect()
}

/// Where the symlink `link` leads: resolved whole if it exists, else its directory resolved
/// (or, missing too, taken as written without `.` and `..`) and its name.
fn link_target(link: &Path) -> Option<PathBuf> {
    let to = std::fs::read_link(link).ok()?;
    let to = if to.is_absolute() {
        to
    } else {
        link.parent()?.join(to)
    };
    if let Ok(resolved) = to.canonicalize() {
        return Some(resolved);
    }
    let mut lexical = PathBuf::from("/");
    for c in to.components() {
        match c {
            std::path::Component::Normal(n) => lexical.push(n),
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            _ => {}
        }
    }
    let name = lexical.file_name()?.to_owned();
    let dir = lexical.parent()?;
    Some(
        dir.canonicalize()
            .unwrap_or_else(|_| dir.to_owned())
            .join(name),
    )
}

/// The interface files an agent may write in its own root cgroup: those of cgroup delegation.
pub(super) const DELEGATED: [&str; 3] =
    ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"];

/// The agent root's interface files it may not write (its limits and settings), as they are
/// on the node now (the controllers enabled above it decide which exist): the writable ones
/// (read-only statistics need no rule) except what delegation grants, `cgroup.kill` (it only
/// kills the agent) and the `*.pressure` files (writing one sets a PSI trigger for the reader).
/// None if the directory cannot be read.
///
/// Each with its identity, from the directory listing itself (see [`Identities::found_in`]): a
/// thousand agents have tens of thousands of these files, and resolving each by its path again
/// (a `readlink` per component, then a `statx`) was a sixth of compiling their generation.
pub(super) fn root_interface_files(root: &std::path::Path) -> Vec<(PathBuf, Found)> {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(dir) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, Found)> = dir
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !DELEGATED.contains(&name.as_ref())
                && name != "cgroup.kill"
                && !name.ends_with(".pressure")
        })
        .filter_map(|e| {
            // Not followed: a regular file here is not a symlink.
            let m = e.metadata().ok()?;
            (m.is_file() && m.permissions().mode() & 0o200 != 0).then(|| {
                let path = e.path();
                let dev = crate::kernel::kernel_dev_at(&path, m.dev(), false);
                (path, (dev, m.ino(), false))
            })
        })
        .collect();
    files.sort();
    files
}

/// The kernel's settings, which root writes with no capability (only the files' modes), and
/// several of which make the kernel run a program of the writer's choosing as root, outside
/// every cgroup but the root: `kernel.core_pattern` (`|/path` on any crash),
/// `kernel.modprobe` (on any unknown module request), binfmt_misc (an interpreter for every
/// exec of a matching file, mounted at /proc/sys/fs/binfmt_misc), `/sys/kernel/uevent_helper`
/// (on every device event). The rest reconfigure the node under the policy (sysctls, device and
/// driver attributes in sysfs) or stop it (`/proc/sysrq-trigger`); and the kernel's log
/// (`/dev/kmsg`, written with no capability: lines that reach the node's consoles, escape
/// sequences and all; red team round 21). Agents may not write them
/// unless a policy allows kernel settings; their own cgroup subtree (below /sys/fs/cgroup) is
/// more specific and stays writable.
pub(super) const KERNEL_SETTINGS: [&str; 4] =
    ["/proc/sys", "/proc/sysrq-trigger", "/sys", "/dev/kmsg"];

/// The node's own programs, and the files that make the node run a program as root outside
/// every agent: the schedulers (cron, at), the service manager's units (in /etc, /usr/lib and
/// /run/systemd), the loader's preload list and library paths, logins (shell startup files,
/// PAM, sudo, SSH keys), udev rules, modprobe's `install` lines, dpkg's maintainer scripts, and
/// the binaries and libraries root runs, including add-on software in /opt (container
/// runtimes run the CNI plugins in /opt/cni/bin as root for every pod). A root agent that writes one of them has code run for
/// it outside its cgroup (by cron within a minute, by the next login, by the next boot). Also
/// the runtime configuration directories the same tools read besides /etc (modprobe's
/// `install` lines in /run/modprobe.d run at the next module load by anyone; sysctl.d,
/// binfmt.d, tmpfiles.d, modules-load.d; systemd-sysext's extension images), and the other
/// containers' files: their images' layers and root filesystems, and pods' volumes (what the
/// next `kubectl exec`, probe or restart runs there, in that container's cgroup; red team round
/// 8). Also what runs as root at the next boot or kernel upgrade: cloud-init's per-boot scripts
/// and the instance object it unpickles (`/var/lib/cloud`), DKMS's module sources (built as
/// root for every new kernel), logind's linger list (a user's service manager started at boot),
/// the container device specifications (`/run/cdi`: a hook there runs as root for the next
/// container that asks for the device; red team round 15). Also the FIFOs root services read
/// commands from, from any writer (red team round 21): dmeventd's (`dlopen` of the library a
/// registration names, as root) and systemd's `/run/initctl` (a runlevel: power off, reboot,
/// rescue mode with every service stopped, this daemon's included); the mail and print spools
/// (a message queued in `/var/spool/postfix` or `exim4` is sent by the mail system, outside
/// the agent, wherever it names); and apt's lists, downloaded packages and debconf answers (what
/// the next `apt upgrade` installs, as root). Agents may not write, create, truncate or
/// name anything there unless a policy allows system files. (With the big directories of
/// [`NOT_ENUMERATED`].)
pub(super) const SYSTEM_FILES: [&str; 38] = [
    "/etc",
    "/run/dmeventd-client",
    "/run/dmeventd-server",
    "/run/initctl",
    "/var/spool/postfix",
    "/var/spool/exim4",
    "/var/spool/mqueue",
    "/var/spool/clientmqueue",
    "/var/spool/nullmailer",
    "/var/spool/dma",
    "/var/spool/cups",
    "/var/lib/apt",
    "/var/cache/apt",
    "/var/cache/debconf",
    "/var/lib/cloud",
    "/var/lib/dkms",
    "/var/lib/systemd/linger",
    "/run/cdi",
    "/var/spool/cron",
    "/var/spool/at",
    "/var/lib/dpkg/info",
    "/run/systemd",
    "/run/udev",
    "/run/modprobe.d",
    "/run/sysctl.d",
    "/run/binfmt.d",
    "/run/tmpfiles.d",
    "/run/modules-load.d",
    "/var/lib/extensions",
    "/var/lib/confexts",
    "/root/.ssh",
    "/root/.profile",
    "/root/.bashrc",
    "/root/.bash_profile",
    "/root/.bash_login",
    "/root/.bash_logout",
    "/root/.config/systemd",
    "/root/.config/autostart",
];

/// The files in a user's home that run as that user, outside every agent, as code or as
/// commands: the login shells' startup files (and what they source), the X session's, SSH's
/// authorized keys and client configuration (a login, then anything; `ProxyCommand`); the
/// directories the user's `PATH` and Python's user site put first (`~/bin`, `~/.local/bin`,
/// `~/.local/lib`: a `.pth` file runs in every Python); the whole XDG configuration directory
/// (user units, autostart entries, git's and pip's configuration, fish); and the configuration
/// of tools that run commands from it (git's `core.fsmonitor`, kubectl's and the AWS CLI's
/// credential programs, Docker's credential helpers, npm's `script-shell`, cargo, gpg, editors,
/// debuggers, terminals' multiplexers, mailcap, REPLs' startup files, build tools' init
/// scripts, coding agents' hooks); the toolchain managers whose shims and init scripts the
/// startup files run (rustup's, nvm's, pyenv's, SDKMAN!'s; red team round 15), and
/// [`DATA_FILES`]. Refused in every home /etc/passwd names (root's partly in
/// [`SYSTEM_FILES`] too), as system files are; a home that does not exist at the reload is
/// refused whole (whatever is written into it once someone makes it).
pub(super) const LOGIN_FILES: [&str; 61] = [
    ".ssh",
    ".profile",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".bash_aliases",
    ".inputrc",
    ".zshenv",
    ".zprofile",
    ".zshrc",
    ".zlogin",
    ".zlogout",
    ".kshrc",
    ".mkshrc",
    ".cshrc",
    ".tcshrc",
    ".login",
    ".logout",
    ".xinitrc",
    ".xsession",
    ".xsessionrc",
    ".xprofile",
    ".pam_environment",
    "bin",
    ".local/bin",
    ".local/lib",
    ".config",
    ".gitconfig",
    ".kube",
    ".aws",
    ".docker",
    ".npmrc",
    ".yarnrc",
    ".pip",
    ".pydistutils.cfg",
    ".cargo",
    ".rustup",
    ".nvm",
    ".pyenv",
    ".sdkman",
    ".gnupg",
    ".vimrc",
    ".vim",
    ".exrc",
    ".emacs",
    ".emacs.d",
    ".gdbinit",
    ".tmux.conf",
    ".screenrc",
    ".mailcap",
    ".ipython",
    ".psqlrc",
    ".Rprofile",
    ".irbrc",
    ".gradle",
    ".m2",
    ".ansible.cfg",
    ".claude",
    ".vscode-server",
    ".wgetrc",
];

/// What the user's service manager and session bus start, and shells and editors load, from
/// `~/.local/share` (user units, D-Bus services, Neovim's site plugins, completions; red team
/// round 15): refused where `~/.local/share` exists at the reload. Where it does not, these
/// are not named at all: a missing directory on the way to a protected path is refused whole,
/// and `~/.local/share` is where uv, pipx, Jupyter and podman keep an agent's own data.
pub(super) const DATA_FILES: [&str; 4] = ["systemd", "dbus-1", "nvim/site", "bash-completion"];

/// At most this many homes get [`LOGIN_FILES`] (a directory service can list thousands of
/// users; the first in /etc/passwd order).
const MAX_HOMES: usize = 256;

/// [`LOGIN_FILES`] in each of the [`homes`] of `passwd` (the text of /etc/passwd); a home that
/// `exists` says is not there, whole.
pub(super) fn login_files(passwd: &str, exists: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for home in homes(passwd) {
        if exists(home) {
            files.extend(LOGIN_FILES.iter().map(|f| home.join(f)));
            let data = home.join(".local/share");
            if exists(&data) {
                files.extend(DATA_FILES.iter().map(|f| data.join(f)));
            }
        } else {
            files.push(home.to_path_buf());
        }
    }
    files
}

/// The orchestrator's credentials on a node: with them an agent has the API server run a pod
/// (or anything) outside it, as a runtime socket would (red team round 11). Refused for reading
/// unless a policy allows runtime sockets: kubeadm's kubeconfigs and PKI, the kubelet's client
/// certificate and every pod's secrets and service-account tokens, k3s's, RKE2's, k0s's and
/// MicroK8s's. Each home's `.kube` (users' kubeconfigs) too, see [`orchestrator_credentials`].
pub(super) const ORCHESTRATOR_CREDENTIALS: [&str; 14] = [
    "/etc/kubernetes",
    // A control-plane node's etcd: every Secret of the cluster.
    "/var/lib/etcd",
    "/var/lib/kubelet/pki",
    "/var/lib/kubelet/kubeconfig",
    // A bootstrap token gets a node's client certificate (AKS, GKE).
    "/var/lib/kubelet/bootstrap-kubeconfig",
    "/var/lib/kubelet/pods",
    "/etc/rancher",
    "/var/lib/rancher/k3s/server",
    "/var/lib/rancher/k3s/agent",
    "/var/lib/rancher/rke2/server",
    "/var/lib/rancher/rke2/agent",
    "/var/lib/k0s/pki",
    "/var/snap/microk8s/current/credentials",
    // MicroK8s's CA key signs a client certificate of any group.
    "/var/snap/microk8s/current/certs",
];

/// [`ORCHESTRATOR_CREDENTIALS`], and `.kube` in each of the [`homes`] of `passwd`.
pub(super) fn orchestrator_credentials(passwd: &str) -> Vec<PathBuf> {
    ORCHESTRATOR_CREDENTIALS
        .iter()
        .map(PathBuf::from)
        .chain(homes(passwd).into_iter().map(|h| h.join(".kube")))
        .collect()
}

/// Every system file: [`SYSTEM_FILES`] and [`NOT_ENUMERATED`].
fn system_files() -> impl Iterator<Item = &'static str> {
    SYSTEM_FILES.iter().chain(&NOT_ENUMERATED).copied()
}

/// The homes that get [`LOGIN_FILES`]: root's, and each home directory `passwd` names, once
/// each, in its order, at most [`MAX_HOMES`], but for homes inside [`SYSTEM_FILES`] (`/bin`,
/// `/usr/sbin`: covered whole already). Root's is `/root` whatever `passwd` says (a node image
/// without root's line still runs root's programs).
pub(crate) fn homes(passwd: &str) -> Vec<&Path> {
    let mut seen = std::collections::HashSet::new();
    std::iter::once("/root")
        .chain(passwd.lines().filter_map(|l| l.split(':').nth(5)))
        .filter(|h| h.starts_with('/'))
        .filter(|h| !system_files().any(|s| Path::new(h).starts_with(s)))
        .filter(|h| seen.insert(*h))
        .take(MAX_HOMES)
        .map(Path::new)
        .collect()
}

/// The system files in directories too big to read on every reload: [`SYSTEM_FILES`] too, but
/// their entries are not enumerated by the identity resolution (for other names and mount
/// points made before the load). The installed software, the container runtimes' state, and
/// the other containers' storage
/// (with snapd's images and services' data, which the node mounts and runs as root at boot, and
/// LXC's, LXD's, Incus's and systemd-nspawn's containers and their configurations, whose hooks
/// run on the node as root; red team round 15).
pub(super) const NOT_ENUMERATED: [&str; 29] = [
    "/usr",
    "/opt",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/var/lib/kubelet",
    "/var/lib/rancher",
    "/run/containerd",
    "/run/containers",
    "/run/k3s",
    // The other runtimes' state: a container's `state.json` tells the next `runc exec`
    // (`kubectl exec`, a probe) which namespaces and cgroups to join, and Docker's FIFOs are
    // containers' stdin (red team round 28).
    "/run/docker",
    "/run/runc",
    "/run/crun",
    "/run/libpod",
    "/run/crio",
    "/var/lib/snapd",
    "/var/snap",
    "/var/lib/lxc",
    "/var/lib/lxd",
    "/var/lib/incus",
    "/var/lib/machines",
    "/var/lib/portables",
];

/// [`LOGIN_FILES`] that are package caches and toolchains (tens of thousands of entries on a
/// developer's or a CI runner's machine: `~/.cargo` alone held 29,581 on the development host,
/// and listing it on every reload made a 10,000-rule reload 4× slower): not enumerated either,
/// as [`NOT_ENUMERATED`]. Writing below them stays refused by path and by the directory's
/// identity; a hard link made *before the load* from elsewhere to a file below them is decided
/// by its path only, as one to a file of `/usr` is.
pub(super) const NOT_ENUMERATED_IN_HOMES: [&str; 9] = [
    ".cargo",
    ".rustup",
    ".nvm",
    ".pyenv",
    ".sdkman",
    ".m2",
    ".gradle",
    ".vscode-server",
    ".local/lib",
];

/// Every directory [`NOT_ENUMERATED`] and [`NOT_ENUMERATED_IN_HOMES`] name, with the homes of
/// `passwd` (the text of /etc/passwd).
pub(super) fn not_enumerated(passwd: &str) -> Vec<PathBuf> {
    let in_homes = homes(passwd).into_iter().flat_map(|home| {
        NOT_ENUMERATED_IN_HOMES
            .iter()
            .map(move |cache| home.join(cache))
    });
    NOT_ENUMERATED
        .iter()
        .map(PathBuf::from)
        .chain(in_homes)
        .collect()
}

/// The [`allow`] bits that change the shared built-in path rules (see
/// [`governance_common::builtin_class`]).
pub(super) const SHARED_RELAXATIONS: u32 =
    allow::KERNEL_SETTINGS | allow::SYSTEM_FILES | allow::RUNTIME_SOCKETS;

/// Is a built-in relaxed for `agent`: set true by an enforcing policy of the agent, false by
/// none?
pub(super) fn relaxed_for(governing: &[&Policy], get: fn(&Policy) -> Option<bool>) -> bool {
    governing.iter().any(|p| get(p) == Some(true))
        && !governing.iter().any(|p| get(p) == Some(false))
}

/// The [`allow`] bits of the built-ins a policy relaxed for `agent` that change the shared
/// built-in path rules (kernel settings, system files, runtime sockets: the orchestrator's
/// credentials).
pub(super) fn relaxations(governing: &[&Policy]) -> u32 {
    let mut bits = 0;
    if relaxed_for(governing, |p| p.allow_kernel_settings) {
        bits |= allow::KERNEL_SETTINGS;
    }
    if relaxed_for(governing, |p| p.allow_system_files) {
        bits |= allow::SYSTEM_FILES;
    }
    if relaxed_for(governing, |p| p.allow_runtime_sockets) {
        bits |= allow::RUNTIME_SOCKETS;
    }
    bits
}

/// The built-in path rules every agent shares (with the relaxations `relaxed`): no access to
/// the daemon's secrets; no writes to the policy, the pins, the daemon's executable, and,
/// unless relaxed, the kernel's settings and the node's system files. Each path as written and
/// as resolved now (a relative or symlinked --policy means the same directory as the kernel's
/// resolved path); a prefix node covers the path itself too (a file: the executable, the
/// token, the shell startup files).
pub(super) fn shared_denied(
    protect: &Protect,
    relaxed: u32,
    identities: &mut Identities,
) -> Vec<(u8, Node, Ranked)> {
    let r = Ranked {
        specificity: [1, 0, u32::MAX - 1, 0],
        rule: rule_ref(NO_RULE, KVerdict::Block, 0),
        shadow: false,
    };
    let mut out = Vec::new();
    for letter in WRITE_LETTERS.into_iter().chain([access::READ]) {
        for d in &denied_dirs(protect, relaxed, letter) {
            for path in identities.spellings(d) {
                out.push((letter, Node { path, exact: false }, r));
            }
        }
    }
    out
}

/// The paths the built-ins refuse access letter `letter` below, with the relaxations
/// `relaxed`: the daemon's secrets, for reads the orchestrator's credentials (unless relaxed),
/// and for writes also the policy, the pins, the daemon's
/// executable, the kernel's settings and the system files (each unless relaxed). With no
/// relaxation, a write letter's are every built-in path.
pub(super) fn denied_dirs(protect: &Protect, relaxed: u32, letter: u8) -> Vec<PathBuf> {
    let mut denied: Vec<PathBuf> = protect.no_access.clone();
    if letter == access::READ && relaxed & allow::RUNTIME_SOCKETS == 0 {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        denied.extend(orchestrator_credentials(&passwd));
    }
    if letter != access::READ {
        denied.extend(protect.no_write.iter().cloned());
        if relaxed & allow::KERNEL_SETTINGS == 0 {
            denied.extend(KERNEL_SETTINGS.iter().map(PathBuf::from));
        }
        if relaxed & allow::SYSTEM_FILES == 0 {
            denied.extend(system_files().map(PathBuf::from));
            denied.extend(protect.system_links.iter().cloned());
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            denied.extend(login_files(&passwd, Path::exists));
        }
    }
    denied
}

/// The keys of the shared built-ins' own nodes in a class's path table, as a prefix and as the
/// exact node a prefix also stores (see [`drop_shared`]).
pub(super) fn shared_keys(shared: &[(u8, Node, Ranked)]) -> SharedKeys {
    shared
        .iter()
        .flat_map(|(letter, node, _)| {
            [
                (*letter, Node::bytes_of(&node.path, node.exact)),
                (*letter, Node::bytes_of(&node.path, true)),
            ]
        })
        .collect()
}

/// [`shared_keys`]: a set, since every class is looked up in it.
pub(super) type SharedKeys = foldhash::HashSet<(u8, Vec<u8>)>;

/// Leave the shared built-ins' own nodes ([`shared_keys`]) to the built-in class (their answer
/// there is the same: a built-in outranks every rule). One pass over the class's table with a
/// hash lookup per entry: a removal per shared key (thousands, with every home's login files)
/// compared long keys in the table's tree for every class, a sixth of a 1,000-agent compile.
pub(super) fn drop_shared(c: &mut Class, keys: &SharedKeys) {
    c.paths.retain(|k, _| !keys.contains(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_in_etc_protect_where_they_lead() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        let run = root.path().join("run");
        std::fs::create_dir_all(etc.join("ssl")).unwrap();
        std::fs::create_dir_all(run.join("resolvconf")).unwrap();
        std::fs::write(run.join("resolvconf/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        let link = |to: &Path, name: &str| std::os::unix::fs::symlink(to, etc.join(name)).unwrap();
        // Resolved, relative too; a target not made yet (its directory resolved); one below a
        // subdirectory, and two (a unit linked in with `systemctl link`); the root directory,
        // the kernel's files and the system files: none.
        link(&run.join("resolvconf/resolv.conf"), "resolv.conf");
        link(Path::new("../run/resolvconf/resolv.conf"), "resolv2.conf");
        link(&run.join("NetworkManager/resolv.conf"), "nm.conf");
        link(&run.join("resolvconf/later.conf"), "later.conf");
        link(&run.join("netconfig/x.conf"), "ssl/netconfig.conf");
        std::fs::create_dir_all(etc.join("systemd/system")).unwrap();
        link(&run.join("units/app.service"), "systemd/system/app.service");
        link(Path::new("/"), "everything");
        link(Path::new("/proc/mounts"), "mtab");
        link(Path::new("/usr/lib/os-release"), "os-release");
        let run = run.canonicalize().unwrap();
        assert_eq!(
            system_link_targets(&etc),
            [
                run.join("NetworkManager/resolv.conf"),
                run.join("netconfig/x.conf"),
                run.join("resolvconf/later.conf"),
                run.join("resolvconf/resolv.conf"),
                run.join("units/app.service"),
            ]
        );
    }

    #[test]
    fn every_home_in_passwd_gets_its_login_files() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                      alice:x:1000:1000:Alice:/home/alice:/bin/zsh\n\
                      broken line\n\
                      svc:x:999:999::relative/home:/bin/sh\n";
        let all = |_: &Path| true;
        let files = login_files(passwd, all);
        for f in [
            "/home/alice/.ssh",
            "/home/alice/.bashrc",
            "/home/alice/.zshrc",
            "/home/alice/.config",
            "/home/alice/.gitconfig",
            "/root/.local/lib",
            "/root/.zshenv",
        ] {
            assert!(files.contains(&PathBuf::from(f)), "{f}");
        }
        assert_eq!(
            files.len(),
            2 * (LOGIN_FILES.len() + DATA_FILES.len()),
            "no relative home, no broken line, none inside the system files (/usr/sbin)"
        );
        let twice = format!("{passwd}alice2:x:1001:1001::/home/alice:/bin/sh\n");
        assert_eq!(
            login_files(&twice, all),
            files,
            "a home shared by two users, once"
        );
        // A home that does not exist: refused whole, so that it is not made with them in it.
        let missing = login_files(passwd, |h| h != Path::new("/home/alice"));
        assert!(missing.contains(&PathBuf::from("/home/alice")));
        assert_eq!(missing.len(), LOGIN_FILES.len() + DATA_FILES.len() + 1);
        let many: String = (0..1000)
            .map(|i| format!("u{i}:x:{i}:{i}::/home/u{i}:/bin/sh\n"))
            .collect();
        assert_eq!(
            login_files(&many, all).len(),
            MAX_HOMES * (LOGIN_FILES.len() + DATA_FILES.len())
        );
        // `~/.local/share`'s files where it exists; nothing below it where it does not.
        let bare = login_files(passwd, |p| !p.ends_with(".local/share"));
        assert!(
            !bare
                .iter()
                .any(|f| f.to_string_lossy().contains(".local/share"))
        );
        assert!(
            files
                .iter()
                .any(|f| f == Path::new("/home/alice/.local/share/systemd"))
        );
        // Root's home without root's line (a node image with a minimal /etc/passwd, or none).
        let none = login_files("", all);
        assert_eq!(none.len(), LOGIN_FILES.len() + DATA_FILES.len());
        assert!(none.contains(&PathBuf::from("/root/.local/lib")));
    }

    #[test]
    fn package_caches_in_every_home_are_not_enumerated() {
        let passwd = "alice:x:1000:1000:Alice:/home/alice:/bin/zsh\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
        let skipped = not_enumerated(passwd);
        for d in [
            "/usr",
            "/root/.cargo",
            "/home/alice/.m2",
            "/home/alice/.local/lib",
        ] {
            assert!(skipped.contains(&PathBuf::from(d)), "{d}");
        }
        assert!(!skipped.contains(&PathBuf::from("/usr/sbin/.cargo")));
        // What is enumerated still: the login files' directories that are configuration.
        assert!(
            !skipped
                .iter()
                .any(|d| d.ends_with(".config") || d.ends_with(".ssh"))
        );
    }
}
