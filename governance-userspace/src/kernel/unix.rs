//! Unix sockets in the maps: the built-in refusals (the daemon's control socket; container-
//! runtime and service-manager sockets; name-service sockets), a generation's Unix-socket rules (a path resolved to
//! the socket file's identity, an abstract name hashed), and where the TCP control API listens.
//!
//! The kernel decides on a socket file's identity (device, inode), which a server changes
//! whenever it re-creates its socket (a restart unlinks and binds again). So the identities are
//! looked up again whenever they may have changed: the daemon watches the sockets' directories
//! and checks once a second ([`Enforcer::unix_sockets_changed`]); a runtime socket is refused
//! again at once, a rule's socket with the next generation.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap};
use governance_common::{ApiAddr, UNIX_ABSTRACT_DEV, UnixId, maps, unix_name_hash, unix_protected};

use super::{Enforcer, KernelError, KernelPolicy};
use crate::policy::UnixTarget;

/// Sockets whose server starts processes on request (containers, units, transient services):
/// an agent that reaches one gets a process outside the agent to act for it. Refused to agents
/// unless a policy sets `kernel: { allow_runtime_sockets: true }`.
pub const RUNTIME_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/containerd/containerd.sock.ttrpc",
    "/run/docker/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/k0s/containerd.sock",
    "/var/snap/microk8s/common/run/containerd.sock",
    "/run/cri-dockerd.sock",
    "/var/run/cri-dockerd.sock",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/crio/crio.sock",
    // NRI (containerd 2, CRI-O): a plugin adjusts every new container, OCI hooks included,
    // which the runtime runs as root on the node.
    "/run/nri/nri.sock",
    "/var/run/nri/nri.sock",
    "/run/podman/podman.sock",
    "/run/buildkit/buildkitd.sock",
    "/run/systemd/private",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
    "/run/snapd.socket",
    // chronyd's command socket: `chronyc add server <name>` has it resolve the name and send
    // to it, outside the agent (red team round 11).
    "/run/chrony/chronyd.sock",
    "/var/run/chrony/chronyd.sock",
    // System containers (libvirt's sockets are a tree: `RUNTIME_SOCKET_TREES`), and LXD's and
    // Incus's per-user sockets (containers of a project of one's own; red team round 30).
    "/var/snap/lxd/common/lxd/unix.socket",
    "/var/snap/lxd/common/lxd-user/unix.socket",
    "/var/lib/lxd/unix.socket",
    "/var/lib/incus/unix.socket",
    "/var/lib/incus/unix.socket.user",
    // Package builders that fetch and build for any client (round 30): nix-daemon's and
    // guix-daemon's sockets are open to every user by default, and a fixed-output derivation
    // is fetched from any URL by the daemon, outside the agent.
    "/nix/var/nix/daemon-socket/socket",
    "/var/guix/daemon-socket/socket",
    // fail2ban's: `set <jail> action ... actionban <command>` runs the command as root.
    "/run/fail2ban/fail2ban.sock",
    "/var/run/fail2ban/fail2ban.sock",
    // Cilium's agent API: `PolicyEnforcement=never` lifts every pod's network policy.
    "/run/cilium/cilium.sock",
    "/var/run/cilium/cilium.sock",
    // gssproxy: Kerberos tickets from the node's keytab.
    "/run/gssproxy.sock",
    "/var/lib/gssproxy/default.sock",
    // Process supervisors.
    "/run/supervisor.sock",
    "/var/run/supervisor.sock",
    // udev's control socket: `--property=LD_PRELOAD=...` goes into the environment of every
    // program a udev rule runs, as root, outside the agent (and `--exit` stops device events).
    "/run/udev/control",
    // lvmpolld runs `lvm lvpoll` as root with the configuration directory a client names.
    "/run/lvm/lvmpolld.socket",
    // systemd's notification socket: a root sender's `MAINPID=` makes any process its
    // service's main one, which the service manager then signals (`WATCHDOG=trigger`: this
    // daemon killed by PID 1; red team round 21). Refused unless runtime sockets are allowed
    // (an agent that is a `Type=notify` service needs that).
    "/run/systemd/notify",
    // journald's stream socket: a new stream names its own unit and asks for its lines on the
    // node's console (a stream systemd set up as a service's output was connected before the
    // agent ran and is not affected).
    "/run/systemd/journal/stdout",
    // PID 1's varlink server answers here too, with the same methods as on
    // `/run/systemd/io.systemd.Manager` (reload, re-execute, restart units: round 26's review),
    // though it sits among userdbd's name-service sockets.
    "/run/systemd/userdb/io.systemd.DynamicUser",
    // CUPS: a queue pointed at `ipp://<anywhere>` and a job sent to it, by cupsd.
    "/run/cups/cups.sock",
    "/var/run/cups/cups.sock",
];

/// The same, per user, below `/run/user/<uid>/` (a user's systemd manager, session bus,
/// rootless Podman and Docker).
pub const USER_RUNTIME_SOCKETS: &[&str] = &[
    "systemd/private",
    "bus",
    "docker.sock",
    "buildkit/buildkitd.sock",
    // Key agents: they sign and decrypt with the user's keys for any client (red team round
    // 21; GnuPG's and GNOME Keyring's are trees below).
    "openssh_agent",
    "gcr/ssh",
    // Wayland compositors (some let any client make a virtual keyboard).
    "wayland-0",
    "wayland-1",
    // PipeWire (its PulseAudio server is `pulse/native`, a tree above).
    "pipewire-0",
    "pipewire-0-manager",
];

/// The same, below each home /etc/passwd names: GnuPG's agent and dirmngr where the user has no
/// runtime directory (their sockets are then in `~/.gnupg`).
pub const HOME_RUNTIME_SOCKETS: &[&str] = &[
    ".gnupg/S.gpg-agent",
    ".gnupg/S.gpg-agent.ssh",
    ".gnupg/S.gpg-agent.extra",
    ".gnupg/S.gpg-agent.browser",
    ".gnupg/S.dirmngr",
    // Docker Desktop's engine (round 30).
    ".docker/desktop/docker.sock",
    ".docker/run/docker.sock",
];

/// Directories below each home every socket of which is a runtime's: OpenSSH's agents (10.1
/// and later put them in `~/.ssh/agent/`).
pub const HOME_RUNTIME_SOCKET_DIRS: &[&str] = &[".ssh/agent"];

/// Directories every socket of which is a runtime's: containerd's shims (their task API execs
/// processes in containers), and PHP-FPM's pools (FastCGI runs the script a request names).
pub const RUNTIME_SOCKET_DIRS: &[&str] = &["/run/containerd/s", "/run/php", X11_DIR];

/// Directories every socket of which is a runtime's, down to [`RUNTIME_TREE_DEPTH`] levels:
/// systemd's and udev's. Besides the sockets named above, systemd 256 and later serve varlink
/// there (red team round 26): PID 1's `io.systemd.Manager` (reload, re-execute, restart any
/// unit, start transient ones), machined's `io.systemd.Machine` (`Open` runs a command as root
/// on the node), udevd's `io.systemd.Udev` (`SetEnvironment`: `LD_PRELOAD` for every program
/// a rule runs), systemd-oomd's (a cgroup named for it to kill), importd's (downloads of any
/// URL), journald's (rotation, giving up /var), `io.systemd.Credentials` (decryption of
/// sealed credentials). The name services' directories ([`NAME_SERVICE_SOCKET_DIRS`]) are
/// theirs, and the logging sockets ([`LOGGING_SOCKETS`]) stay open.
///
/// Also Podman's and CRI-O's run directories (see [`CONTAINER_STORAGES`] for conmon's attach
/// sockets), and the kubelet's plugin sockets (CSI node plugins unpublish and unstage other pods' volumes,
/// device plugins allocate devices; red team round 28).
pub const RUNTIME_SOCKET_TREES: &[&str] = &[
    "/run/systemd",
    "/run/udev",
    "/run/libpod",
    "/run/crio",
    "/var/lib/kubelet/plugins",
    "/var/lib/kubelet/plugins_registry",
    "/var/lib/kubelet/device-plugins",
    // libvirt's daemons, the split ones too (storage pools write files as root, LXC
    // containers, host devices, secrets, the admin sockets' log outputs; round 30).
    "/run/libvirt",
];

/// Container storages (Podman's, CRI-O's): each container's `overlay-containers/<id>/userdata`
/// holds conmon's attach socket (a container's stdin: a root shell in many; red team round 28's
/// review) and its notify socket. The rootful ones, and per home and per `/run/user/<uid>/`
/// the rootless ones ([`HOME_CONTAINER_STORAGE`], `containers`).
pub const CONTAINER_STORAGES: &[&str] = &["/run/containers/storage", "/var/lib/containers/storage"];

/// A rootless container storage, below each home.
pub const HOME_CONTAINER_STORAGE: &str = ".local/share/containers/storage";

/// Each container's `userdata` directory in the storage at `storage`, in name order.
fn container_userdata(storage: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(storage.join("overlay-containers")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join("userdata"))
        .collect();
    dirs.sort();
    dirs
}

/// The same below each `/run/user/<uid>/`: a user's systemd manager's varlink sockets, rootless
/// Podman's conmon attach sockets, and the desktop's servers that act for any client (round
/// 28): the sound servers (PulseAudio's and PipeWire's modules send audio to any address and
/// write files), the accessibility bus (`GenerateKeyboardEvent` types into the session), and
/// p11-kit's server (signatures with the user's keys).
/// Also (red team round 30) GnuPG's agents and dirmngr (with another `GNUPGHOME` in
/// `gnupg/d.<hash>/`), GNOME Keyring's (`ssh`, `pkcs11`, `control`), Emacs 27's server
/// (`emacs/server`: `--eval` runs Lisp in the editor), rootless Podman's and its machines',
/// and a session's libvirt.
pub const USER_RUNTIME_SOCKET_TREES: &[&str] = &[
    "systemd", "libpod", "pulse", "at-spi", "p11-kit", "gnupg", "keyring", "emacs", "podman",
    "libvirt",
];

/// Socket files named with this prefix in each `/run/user/<uid>/`: VS Code's (and its forks')
/// command-line and git sockets (`vscode-ipc-*.sock`: install an extension, which then runs in
/// the editor's extension host; `vscode-git-*.sock`: the signed-in user's GitHub token for
/// git's askpass; round 30). (Where the session has no runtime directory they are in `/tmp`,
/// where anyone may make sockets of that name: not looked for there; see docs/limits.md.)
pub const USER_RUNTIME_SOCKET_PREFIX: &str = "vscode-";

/// How deep below a tree of [`RUNTIME_SOCKET_TREES`] sockets are looked for (`/run/systemd`
/// itself, `/run/systemd/machine`, and down to systemd-nspawn's
/// `/run/systemd/nspawn/unix-export/<machine>/`: a guest's exported services, its SSH server
/// among them).
const RUNTIME_TREE_DEPTH: usize = 6;

/// Sockets in [`RUNTIME_SOCKET_TREES`] that are no runtime's: journald's logging sockets
/// (`syslog(3)` through `/dev/log`, `sd_journal_send`), which every program may write.
pub const LOGGING_SOCKETS: &[&str] = &[
    "/run/systemd/journal/socket",
    "/run/systemd/journal/dev-log",
];

/// The X servers' sockets: a client of an X server types into any window on it (XTEST), a
/// terminal's shell outside the agent among them. They listen at a path here and at the same
/// name in the abstract namespace.
const X11_DIR: &str = "/tmp/.X11-unix";

/// Abstract socket names of runtime servers, by prefix, found among the listening sockets in
/// /proc/net/unix: the X servers' (above), containerd's shims before 1.5 (their task API
/// runs processes in containers, as root on the node for a privileged one), LXC's monitors,
/// and the session
/// buses `dbus-launch` starts (`@/tmp/dbus-*`: a session's services run what it asks; red
/// team round 11).
const RUNTIME_ABSTRACT_PREFIXES: &[&str] = &[
    "/tmp/.X11-unix/",
    "/containerd-shim/",
    "/tmp/dbus-",
    // multipathd's (`fail path`, `shutdown`: the node's multipath storage) and iscsid's (a
    // login to any portal address, past the network rules; red team round 26).
    "/org/kernel/linux/storage/multipathd",
    "ISCSIADM_ABSTRACT_NAMESPACE",
    // liblxc's per-container command sockets (a console's pty, stop, freeze): plain LXC and
    // Proxmox, LXD's and Incus's containers, and the hashed form of a long path (round 28).
    "/var/lib/lxc/",
    "/var/snap/lxd/common/lxd/containers/",
    "/var/lib/lxd/containers/",
    "/var/lib/incus/containers/",
    "lxc/",
];

/// X displays refused by their abstract name whether or not a server listens now (one that
/// starts later is found by the once-a-second look at /proc/net/unix).
const X11_DISPLAYS: u32 = 16;

/// Directories in which every subdirectory named with the prefix holds runtime sockets:
/// terminal multiplexers' servers (tmux's `/tmp/tmux-<uid>/`, screen's `/run/screen/S-<user>/`),
/// which run whatever an attached client types into a session, outside the agent. (A server
/// whose `TMUX_TMPDIR` is elsewhere is not found.)
pub const RUNTIME_SOCKET_SUBDIRS: &[(&str, &str)] = &[
    ("/tmp", "tmux-"),
    // Emacs's server (`emacsclient --eval` runs Lisp in the editor's process).
    ("/tmp", "emacs"),
    ("/run/screen", "S-"),
    ("/var/run/screen", "S-"),
    // ssh-agent's and sshd's forwarded agents (`/tmp/ssh-XXXX/agent.N`): signatures with a
    // user's keys (red team round 21).
    ("/tmp", "ssh-"),
];

/// Sockets of services that look names up for their clients: nscd's (glibc asks it first for
/// hosts, users and groups; unscd and nsncd use the same path), sssd's NSS pipe. A name an
/// agent makes up (`<data>.attacker.example`) would be resolved by the service, outside the
/// agent, as a DNS query its network rules refuse. Refused to agents unless a policy sets
/// `kernel: { allow_name_service_sockets: true }`; refused, the C library falls back to its
/// own lookups (files, then its own DNS queries, which the network rules decide).
pub const NAME_SERVICE_SOCKETS: &[&str] = &[
    "/run/nscd/socket",
    "/var/run/nscd/socket",
    "/var/lib/sss/pipes/nss",
    // nss-mdns asks avahi (a name made up goes out as a multicast DNS query), nss-ldapd's
    // nslcd and winbind ask the directory servers (red team round 21).
    "/run/avahi-daemon/socket",
    "/var/run/avahi-daemon/socket",
    "/run/nslcd/socket",
    "/var/run/nslcd/socket",
    "/run/samba/winbindd/pipe",
    "/var/run/samba/winbindd/pipe",
    "/var/lib/samba/winbindd_privileged/pipe",
];

/// Directories every socket of which is a name service's: systemd-resolved's varlink sockets
/// (`io.systemd.Resolve`, which nss-resolve asks, and its siblings), and sssd's responders
/// (NSS, PAM's Kerberos requests, SSH keys, sudo rules, autofs maps).
pub const NAME_SERVICE_SOCKET_DIRS: &[&str] = &[
    "/run/systemd/resolve",
    // systemd-userdbd's (`io.systemd.Multiplexer`, `io.systemd.NameServiceSwitch`, which
    // nss-systemd asks for users and groups, and the directory services behind it).
    "/run/systemd/userdb",
    "/var/lib/sss/pipes",
    "/var/lib/sss/pipes/private",
];

/// Every name-service socket path to look at now ([`NAME_SERVICE_SOCKET_DIRS`] expanded, but
/// for the runtime sockets among them).
pub fn name_service_socket_paths() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = NAME_SERVICE_SOCKETS.iter().map(PathBuf::from).collect();
    for dir in NAME_SERVICE_SOCKET_DIRS {
        out.extend(
            sockets_in(Path::new(dir))
                .into_iter()
                .filter(|p| !RUNTIME_SOCKETS.iter().any(|r| p == Path::new(r))),
        );
    }
    out
}

/// The name-service sockets that exist now: identity → the paths that name it (files that are
/// not sockets, the resolver's `resolv.conf` among them, have none).
pub fn resolve_name_service_sockets() -> BTreeMap<(u32, u64), Vec<PathBuf>> {
    let mut out: BTreeMap<(u32, u64), Vec<PathBuf>> = BTreeMap::new();
    for path in name_service_socket_paths() {
        if let Ok(id) = socket_identity(&path) {
            out.entry(id).or_default().push(path);
        }
    }
    out
}

/// Every runtime socket path to look at now (`/run/user/*` and [`RUNTIME_SOCKET_DIRS`]
/// expanded).
pub fn runtime_socket_paths() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = RUNTIME_SOCKETS.iter().map(PathBuf::from).collect();
    let mut dirs: Vec<PathBuf> = RUNTIME_SOCKET_DIRS.iter().map(PathBuf::from).collect();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for home in super::homes(&passwd) {
        out.extend(
            HOME_RUNTIME_SOCKETS
                .iter()
                .map(|s| home.join(s))
                .filter(|p| !is_symlink(p)),
        );
        dirs.extend(HOME_RUNTIME_SOCKET_DIRS.iter().map(|d| home.join(d)));
        dirs.extend(container_userdata(&home.join(HOME_CONTAINER_STORAGE)));
    }
    for storage in CONTAINER_STORAGES {
        dirs.extend(container_userdata(Path::new(storage)));
    }
    for (parent, prefix) in RUNTIME_SOCKET_SUBDIRS {
        if let Ok(entries) = std::fs::read_dir(parent) {
            let mut subdirs: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            subdirs.sort();
            dirs.extend(subdirs);
        }
    }
    for dir in dirs {
        out.extend(sockets_in(&dir));
    }
    let not_runtime: Vec<&Path> = NAME_SERVICE_SOCKET_DIRS
        .iter()
        .chain(LOGGING_SOCKETS)
        .map(Path::new)
        .collect();
    for tree in RUNTIME_SOCKET_TREES {
        out.extend(sockets_below(
            Path::new(tree),
            RUNTIME_TREE_DEPTH,
            &not_runtime,
        ));
    }
    if let Ok(users) = std::fs::read_dir("/run/user") {
        let mut dirs: Vec<PathBuf> = users.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            out.extend(
                USER_RUNTIME_SOCKETS
                    .iter()
                    .map(|s| dir.join(s))
                    .filter(|p| !is_symlink(p)),
            );
            for tree in USER_RUNTIME_SOCKET_TREES {
                out.extend(sockets_below(&dir.join(tree), RUNTIME_TREE_DEPTH, &[]));
            }
            out.extend(sockets_named(&dir, USER_RUNTIME_SOCKET_PREFIX));
            for userdata in container_userdata(&dir.join("containers")) {
                out.extend(sockets_in(&userdata));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The sockets in `dir` (first) and its subdirectories (in name order), `depth` levels down (1:
/// `dir` alone); never through a symlink, and none of `skip` (sockets, or directories skipped whole).
fn sockets_below(dir: &Path, depth: usize, skip: &[&Path]) -> Vec<PathBuf> {
    if depth == 0 || skip.contains(&dir) || is_symlink(dir) {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = sockets_in(dir)
        .into_iter()
        .filter(|p| !skip.contains(&p.as_path()))
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut subdirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        subdirs.sort();
        for sub in subdirs {
            out.extend(sockets_below(&sub, depth - 1, skip));
        }
    }
    out
}

/// The sockets in `dir`, sorted: socket files only, never a symlink (in a directory a user
/// writes, `/tmp/ssh-*` or a home's, a link would have the daemon refuse whatever it points to
/// as this kind of socket, another kind's or a service's every agent uses; round 23).
fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut socks: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .collect();
    socks.sort();
    socks
}

/// The sockets in `dir` whose names start with `prefix`.
fn sockets_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    sockets_in(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(prefix.as_bytes()))
        })
        .collect()
}

/// `path` is a symlink (its own name, not followed).
fn is_symlink(path: &Path) -> bool {
    path.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
}

/// The identity the kernel sees for the socket file at `path` (symlinks followed, as connect()
/// follows them): the superblock device in the kernel's encoding and the inode number.
pub fn socket_identity(path: &Path) -> std::io::Result<(u32, u64)> {
    let meta = std::fs::metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::other("not a Unix socket"));
    }
    Ok((super::kernel_dev_at(path, meta.dev(), true), meta.ino()))
}

/// The runtime sockets that exist now: identity → the paths that name it.
pub fn resolve_runtime_sockets() -> BTreeMap<(u32, u64), Vec<PathBuf>> {
    resolve_runtime_sockets_with(&listening_abstract_names())
}

/// [`resolve_runtime_sockets`], with the abstract names `abstract_names` (found earlier).
fn resolve_runtime_sockets_with(
    abstract_names: &BTreeSet<String>,
) -> BTreeMap<(u32, u64), Vec<PathBuf>> {
    let mut out: BTreeMap<(u32, u64), Vec<PathBuf>> = BTreeMap::new();
    for path in runtime_socket_paths() {
        if let Ok(id) = socket_identity(&path) {
            out.entry(id).or_default().push(path);
        }
    }
    for name in abstract_names {
        out.entry((UNIX_ABSTRACT_DEV, unix_name_hash(name.as_bytes())))
            .or_default()
            .push(format!("@{name}").into());
    }
    out
}

/// Of the `resolved` sockets, those some path of which is in a place only root makes sockets
/// in (not `/tmp`, a user's runtime directory or home, nor an abstract name): refused first.
fn root_only_sockets(resolved: &BTreeMap<(u32, u64), Vec<PathBuf>>) -> BTreeSet<(u32, u64)> {
    const USER_PLACES: [&str; 6] = ["/tmp/", "/var/tmp/", "/run/user/", "/home/", "/root/", "@"];
    resolved
        .iter()
        .filter(|(_, paths)| {
            paths.iter().any(|p| {
                let p = p.to_string_lossy();
                !USER_PLACES.iter().any(|u| p.starts_with(u))
            })
        })
        .map(|(id, _)| *id)
        .collect()
}

/// How often the once-a-second look at the runtime sockets also reads /proc/net/unix for
/// abstract names (every socket of the node's namespace: thousands of lines on a busy node).
/// Each reload reads it too.
const ABSTRACT_RESCAN: std::time::Duration = std::time::Duration::from_secs(10);

/// The runtime servers' abstract names listening now ([`runtime_abstract_names`]).
fn listening_abstract_names() -> BTreeSet<String> {
    runtime_abstract_names(&crate::procfs::read_to_string("/proc/net/unix").unwrap_or_default())
}

/// The abstract names of runtime servers: the X displays' whatever listens, and the listening
/// sockets of `proc_net_unix` (the text of /proc/net/unix) whose abstract name starts with one
/// of [`RUNTIME_ABSTRACT_PREFIXES`].
fn runtime_abstract_names(proc_net_unix: &str) -> BTreeSet<String> {
    /// `__SO_ACCEPTCON` in the Flags column: a listening socket.
    const ACCEPTING: u32 = 0x10000;
    let mut names: BTreeSet<String> = (0..X11_DISPLAYS)
        .map(|n| format!("{X11_DIR}/X{n}"))
        .collect();
    for line in proc_net_unix.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(path)) = (cols.get(3), cols.get(7)) else {
            continue;
        };
        let listening = u32::from_str_radix(flags, 16).is_ok_and(|f| f & ACCEPTING != 0);
        if let Some(name) = path.strip_prefix('@')
            && listening
            && RUNTIME_ABSTRACT_PREFIXES
                .iter()
                .any(|p| name.starts_with(p))
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The directories whose changes may re-create a socket the kernel decides on: those of the
/// runtime sockets and of `rule_paths` that exist (the nearest existing ancestor otherwise).
pub fn socket_dirs(rule_paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = BTreeSet::new();
    let runtime = RUNTIME_SOCKETS
        .iter()
        .chain(NAME_SERVICE_SOCKETS)
        .map(PathBuf::from);
    let in_dirs = RUNTIME_SOCKET_DIRS
        .iter()
        .chain(NAME_SERVICE_SOCKET_DIRS)
        .chain(RUNTIME_SOCKET_TREES)
        .map(|d| Path::new(d).join("x"));
    for p in runtime.chain(in_dirs).chain(rule_paths.iter().cloned()) {
        if let Some(dir) = p.ancestors().skip(1).find(|d| d.is_dir()) {
            dirs.insert(dir.to_owned());
        }
    }
    if Path::new("/run/user").is_dir() {
        dirs.insert("/run/user".into());
    }
    // The directories of the sockets found now (per user, per multiplexer session); one made
    // later is found by the once-a-second look.
    for p in runtime_socket_paths() {
        if let Some(dir) = p.parent().filter(|d| d.is_dir()) {
            dirs.insert(dir.to_owned());
        }
    }
    dirs.into_iter().collect()
}

/// The socket files a generation's `unix` path rules named, and what each resolved to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixTargets {
    /// As written into the maps.
    pub paths: Vec<(PathBuf, Option<(u32, u64)>)>,
    /// As last looked at: a change is reported once, not on every look until the next
    /// generation (which may fail, and would then be asked for again and again).
    pub seen: Vec<(PathBuf, Option<(u32, u64)>)>,
    /// The runtime sockets refused now.
    pub runtime: BTreeSet<(u32, u64)>,
    /// The name-service sockets refused now.
    pub name_service: BTreeSet<(u32, u64)>,
    /// The runtime servers' abstract names last found listening, and when.
    pub abstract_names: Option<(BTreeSet<String>, std::time::Instant)>,
}

/// What changed since the maps were last written (see [`Enforcer::unix_sockets_changed`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketsChanged {
    /// A runtime or name-service socket appeared, went or was re-created: refused again
    /// already.
    pub runtime: bool,
    /// A socket a `unix` rule names did: the rules need the next generation.
    pub rules: bool,
}

impl Enforcer {
    /// Make the [`maps::UNIX_PROTECTED`] entries of kind `why` exactly `ids` (a control-socket
    /// entry is never turned into a runtime one). Whether anything changed.
    fn set_protected(&mut self, why: u32, ids: &BTreeSet<(u32, u64)>) -> Result<bool, KernelError> {
        self.set_protected_first(why, ids, ids)
    }

    /// [`Enforcer::set_protected`], the sockets of `first` (those in places only root makes
    /// sockets in) inserted before the others. The map holds [`MAX_UNIX_PROTECTED`]: when the
    /// others fill it (any user makes sockets in `/tmp/ssh-*`, under its runtime directory,
    /// by an abstract name), the rest are left out and said, and the generation is installed
    /// (red team round 30's review: a full map failed every reload).
    fn set_protected_first(
        &mut self,
        why: u32,
        ids: &BTreeSet<(u32, u64)>,
        first: &BTreeSet<(u32, u64)>,
    ) -> Result<bool, KernelError> {
        let name = maps::UNIX_PROTECTED;
        let mut map: HashMap<_, UnixId, u32> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let present: Vec<(UnixId, u32)> = map.iter().filter_map(Result::ok).collect();
        let mut changed = false;
        for (id, kind) in &present {
            if *kind == why && !ids.contains(&(id.dev, id.ino)) {
                let _ = map.remove(id);
                changed = true;
            }
        }
        let mut left_out = 0;
        let order = ids
            .intersection(first)
            .map(|id| (id, true))
            .chain(ids.difference(first).map(|id| (id, false)));
        for (&(dev, ino), system) in order {
            let id = UnixId { dev, _pad: 0, ino };
            match present.iter().find(|(p, _)| *p == id) {
                Some((_, kind)) if *kind == why || *kind == unix_protected::CONTROL => continue,
                _ => {}
            }
            if left_out > 0 {
                left_out += 1;
                continue;
            }
            match map.insert(id, why, 0) {
                Ok(()) => changed = true,
                Err(source) if system => return Err(KernelError::Map { name, source }),
                Err(_) => left_out += 1,
            }
        }
        if left_out > 0 {
            tracing::warn!(
                left_out,
                max = governance_common::MAX_UNIX_PROTECTED,
                "the table of refused Unix sockets is full: sockets in places any user makes them in are left out (agents may reach them); look for a flood of sockets in /tmp or a runtime directory"
            );
        }
        Ok(changed)
    }

    /// The daemon's control socket (at `path`, just bound) is refused to every agent, whatever
    /// the policy says. Replaces a previous daemon's.
    pub fn protect_control_socket(&mut self, path: &Path) -> Result<(), KernelError> {
        let id = socket_identity(path).map_err(|source| KernelError::UnixTarget {
            path: path.to_owned(),
            source,
        })?;
        self.set_protected(unix_protected::CONTROL, &BTreeSet::from([id]))?;
        Ok(())
    }

    /// Refuse the runtime and name-service sockets that exist now (and forget those that
    /// went). Whether the set changed.
    pub fn protect_runtime_sockets(&mut self) -> Result<bool, KernelError> {
        let names = listening_abstract_names();
        let resolved = resolve_runtime_sockets_with(&names);
        self.unix_targets.abstract_names = Some((names, std::time::Instant::now()));
        let runtime = self.protect_runtime(resolved)?;
        let name_service = resolve_name_service_sockets().into_keys().collect();
        Ok(self.protect_name_service(name_service)? || runtime)
    }

    fn protect_runtime(
        &mut self,
        resolved: BTreeMap<(u32, u64), Vec<PathBuf>>,
    ) -> Result<bool, KernelError> {
        let first = root_only_sockets(&resolved);
        let ids: BTreeSet<(u32, u64)> = resolved.into_keys().collect();
        let changed = self.set_protected_first(unix_protected::RUNTIME, &ids, &first)?;
        self.unix_targets.runtime = ids;
        Ok(changed)
    }

    /// Name-service sockets: one that is also a runtime socket (a link between the lists)
    /// stays a runtime one, as the control socket stays the control socket.
    fn protect_name_service(&mut self, ids: BTreeSet<(u32, u64)>) -> Result<bool, KernelError> {
        let ids: BTreeSet<(u32, u64)> = ids
            .difference(&self.unix_targets.runtime)
            .copied()
            .collect();
        let changed = self.set_protected(unix_protected::NAME_SERVICE, &ids)?;
        self.unix_targets.name_service = ids;
        Ok(changed)
    }

    /// Have the sockets the kernel decides on changed since the maps were written? Re-refuses
    /// the runtime sockets at once when they have.
    pub fn unix_sockets_changed(&mut self) -> Result<SocketsChanged, KernelError> {
        let names = match self.unix_targets.abstract_names.take() {
            Some((names, at)) if at.elapsed() < ABSTRACT_RESCAN => (names, at),
            _ => (listening_abstract_names(), std::time::Instant::now()),
        };
        let resolved = resolve_runtime_sockets_with(&names.0);
        let now: BTreeSet<(u32, u64)> = resolved.keys().copied().collect();
        self.unix_targets.abstract_names = Some(names);
        let runtime = now != self.unix_targets.runtime && self.protect_runtime(resolved)?;
        let name_service: BTreeSet<(u32, u64)> = resolve_name_service_sockets()
            .into_keys()
            .filter(|id| !self.unix_targets.runtime.contains(id))
            .collect();
        let name_service = name_service != self.unix_targets.name_service
            && self.protect_name_service(name_service)?;
        let runtime = runtime || name_service;
        let seen: Vec<(PathBuf, Option<(u32, u64)>)> = self
            .unix_targets
            .paths
            .iter()
            .map(|(path, _)| (path.clone(), socket_identity(path).ok()))
            .collect();
        let rules = seen != self.unix_targets.seen;
        self.unix_targets.seen = seen;
        Ok(SocketsChanged { runtime, rules })
    }

    /// The socket files the installed generation's rules name.
    pub fn unix_rule_paths(&self) -> Vec<PathBuf> {
        self.unix_targets
            .paths
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Where the daemon's TCP control API listens (None: it does not); agents' connects to it
    /// are refused.
    pub fn set_api_addr(&mut self, addr: Option<SocketAddr>) -> Result<(), KernelError> {
        let value = match addr {
            None => ApiAddr::default(),
            Some(a) => ApiAddr {
                addr: match a.ip() {
                    std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    std::net::IpAddr::V6(v6) => v6.octets(),
                },
                port: a.port(),
                any_addr: u8::from(a.ip().is_unspecified()),
                enabled: 1,
                _pad: 0,
            },
        };
        let name = maps::API_ADDR;
        let mut map: Array<_, ApiAddr> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        map.set(0, value, 0)
            .map_err(|source| KernelError::Map { name, source })
    }

    /// A generation's Unix-socket entries: a path becomes the socket file's identity, resolved
    /// now (a socket that does not exist is reported and skipped: nothing to connect to; the
    /// daemon installs the next generation when it appears), an abstract name its hash. Two
    /// rules that name one socket (a hard link) give it the more severe answer. Returns the
    /// paths as resolved, for [`UnixTargets::paths`] once the generation is in force (a drill's
    /// canary is never: red team round 17).
    pub(super) fn unix_entries(
        policy: &KernelPolicy,
        skipped: &mut Vec<KernelError>,
        w: &mut super::slots::Writes,
    ) -> Vec<(PathBuf, Option<(u32, u64)>)> {
        let mut resolved: BTreeMap<PathBuf, Option<(u32, u64)>> = BTreeMap::new();
        for class in &policy.classes {
            let mut by_socket: BTreeMap<(u32, u64), governance_common::RulePair> = BTreeMap::new();
            for (target, value) in &class.unix {
                let (dev, ino) = match target {
                    UnixTarget::Abstract(n) => (UNIX_ABSTRACT_DEV, unix_name_hash(n)),
                    UnixTarget::Path(path) => {
                        let id = resolved
                            .entry(path.clone())
                            .or_insert_with(|| socket_identity(path).ok());
                        match id {
                            Some(id) => *id,
                            None => {
                                let source = socket_identity(path)
                                    .err()
                                    .unwrap_or_else(|| std::io::Error::other("not resolved"));
                                skipped.push(KernelError::UnixTarget {
                                    path: path.clone(),
                                    source,
                                });
                                continue;
                            }
                        }
                    }
                };
                let merged = by_socket.entry((dev, ino)).or_default();
                *merged = super::compile::severer(*merged, *value);
            }
            for ((dev, ino), value) in by_socket {
                w.unix.push(((class.id, dev, ino), value));
            }
        }
        resolved.into_iter().collect()
    }

    /// The socket files of the generation now in force, as its install resolved them.
    pub(super) fn set_unix_rule_paths(&mut self, paths: Vec<(PathBuf, Option<(u32, u64)>)>) {
        self.unix_targets.seen = paths.clone();
        self.unix_targets.paths = paths;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listed directories give their socket files only: a symlink there (in `/tmp/ssh-*`, a
    /// home) would have the daemon refuse what it points to as this kind of socket (round 23).
    #[test]
    fn listed_directories_give_sockets_not_links() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let real = dir.path().join("agent.1");
        let _real = std::os::unix::net::UnixListener::bind(&real).unwrap();
        let elsewhere = other.path().join("service.sock");
        let _elsewhere = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("agent.2")).unwrap();
        std::fs::write(dir.path().join("notes"), "x").unwrap();
        assert_eq!(sockets_in(dir.path()), [real]);
        assert!(is_symlink(&dir.path().join("agent.2")));
    }

    /// When the table is full, the sockets any user could have made give way first (round
    /// 30's review): a socket named by a root-only place is refused first, whatever other names
    /// it has.
    #[test]
    fn sockets_in_root_only_places_come_first() {
        let resolved: BTreeMap<(u32, u64), Vec<PathBuf>> = [
            ((1, 1), vec!["/run/docker.sock".into()]),
            ((1, 2), vec!["/tmp/ssh-x/agent.1".into()]),
            (
                (1, 3),
                vec!["/run/user/1000/bus".into(), "/run/dbus/x".into()],
            ),
            ((9, 4), vec!["@/tmp/dbus-x".into()]),
            ((1, 5), vec!["/home/u/.gnupg/S.gpg-agent".into()]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            root_only_sockets(&resolved),
            BTreeSet::from([(1, 1), (1, 3)])
        );
    }

    /// Sockets by name prefix (VS Code's `vscode-ipc-*.sock` and `vscode-git-*.sock`, red team
    /// round 30): socket files with the prefix only, never a link or another name.
    #[test]
    fn prefixed_sockets_are_found_by_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let ipc = dir.path().join("vscode-ipc-1f2e.sock");
        let git = dir.path().join("vscode-git-9a8b.sock");
        let plain = dir.path().join("app.sock");
        let _l: Vec<_> = [&ipc, &git, &plain]
            .iter()
            .map(|p| std::os::unix::net::UnixListener::bind(p).unwrap())
            .collect();
        let elsewhere = other.path().join("service.sock");
        let _e = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("vscode-link.sock")).unwrap();
        std::fs::write(dir.path().join("vscode-notes"), "x").unwrap();
        assert_eq!(sockets_named(dir.path(), "vscode-"), [git, ipc]);
        assert!(sockets_named(&dir.path().join("missing"), "vscode-").is_empty());
    }

    /// A runtime tree gives its sockets and its subdirectories' down to the depth, never
    /// through a symlink, and none of what is skipped (the name services' directories, the
    /// logging sockets; red team round 26: systemd's varlink sockets).
    #[test]
    fn each_container_s_attach_socket_is_found_in_its_userdata() {
        // Red team round 28's review: conmon binds `attach` in the container's bundle, which
        // `/run/crio/<id>` only links to (symlinks are never followed).
        let storage = tempfile::tempdir().unwrap();
        let s = storage.path();
        for id in ["b2", "a1"] {
            std::fs::create_dir_all(s.join("overlay-containers").join(id).join("userdata"))
                .unwrap();
        }
        let attach = s.join("overlay-containers/a1/userdata/attach");
        let _l = std::os::unix::net::UnixListener::bind(&attach).unwrap();
        std::fs::write(s.join("overlay-containers/a1/userdata/config.json"), "{}").unwrap();
        let dirs = container_userdata(s);
        assert_eq!(
            dirs,
            [
                s.join("overlay-containers/a1/userdata"),
                s.join("overlay-containers/b2/userdata")
            ]
        );
        let found: Vec<PathBuf> = dirs.iter().flat_map(|d| sockets_in(d)).collect();
        assert_eq!(found, [attach]);
        assert!(container_userdata(&s.join("missing")).is_empty());
    }

    #[test]
    fn runtime_trees_give_their_sockets_below_but_not_the_skipped() {
        let tree = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let t = tree.path();
        for d in ["machine", "journal", "resolve", "a/b/c"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        let bind = |p: &Path| std::os::unix::net::UnixListener::bind(p).unwrap();
        let manager = t.join("io.systemd.Manager");
        let machine = t.join("machine/io.systemd.Machine");
        let journal_varlink = t.join("journal/io.systemd.journal");
        let logging = t.join("journal/socket");
        let resolver = t.join("resolve/io.systemd.Resolve");
        let deep = t.join("a/b/c/too-deep");
        let level3 = t.join("a/b/three");
        let _l: Vec<_> = [
            &manager,
            &machine,
            &journal_varlink,
            &logging,
            &resolver,
            &deep,
            &level3,
        ]
        .into_iter()
        .map(|p| bind(p))
        .collect();
        let elsewhere = other.path().join("x");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let _e = bind(&elsewhere.join("service.sock"));
        std::os::unix::fs::symlink(&elsewhere, t.join("linked")).unwrap();
        let (skip_dir, skip_sock) = (t.join("resolve"), logging.clone());
        let found = sockets_below(t, 3, &[skip_dir.as_path(), skip_sock.as_path()]);
        assert_eq!(found, [manager, level3, journal_varlink, machine]);
        assert!(RUNTIME_SOCKET_TREES.contains(&"/run/systemd"));
        assert!(RUNTIME_SOCKET_TREES.contains(&"/run/udev"));
    }

    #[test]
    fn socket_identity_is_the_socket_file_whatever_names_it() {
        let dir = std::env::temp_dir().join(format!("governance-unix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let link = dir.join("link.sock");
        std::fs::hard_link(&sock, &link).unwrap();
        let sym = dir.join("sym.sock");
        std::os::unix::fs::symlink(&sock, &sym).unwrap();
        let id = socket_identity(&sock).unwrap();
        assert_eq!(socket_identity(&link).unwrap(), id);
        assert_eq!(socket_identity(&sym).unwrap(), id);
        // Not a socket, or missing: no identity to decide on.
        let file = dir.join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(socket_identity(&file).is_err());
        assert!(socket_identity(&dir.join("missing")).is_err());
        // The nearest existing directory is watched for a socket that is not there yet.
        let dirs = socket_dirs(&[dir.join("later/x.sock")]);
        assert!(dirs.contains(&dir), "{dirs:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_runtime_list_names_the_container_runtimes_and_service_managers() {
        for s in [
            "/run/containerd/containerd.sock",
            "/run/docker.sock",
            "/var/run/docker.sock",
            "/run/crio/crio.sock",
            // NRI (containerd 2, CRI-O): a plugin adjusts every new container, OCI hooks included,
            // which the runtime runs as root on the node.
            "/run/nri/nri.sock",
            "/var/run/nri/nri.sock",
            "/run/podman/podman.sock",
            "/run/buildkit/buildkitd.sock",
            "/run/systemd/private",
            "/run/dbus/system_bus_socket",
            "/var/lib/incus/unix.socket",
            "/run/supervisor.sock",
            "/nix/var/nix/daemon-socket/socket",
            "/run/fail2ban/fail2ban.sock",
        ] {
            assert!(RUNTIME_SOCKETS.contains(&s), "{s}");
        }
        // libvirt's daemons, the split ones too, as a tree (round 30).
        assert!(RUNTIME_SOCKET_TREES.contains(&"/run/libvirt"));
    }

    #[test]
    fn the_name_service_list_names_nscd_resolved_and_sssd() {
        for s in [
            "/run/nscd/socket",
            "/var/run/nscd/socket",
            "/var/lib/sss/pipes/nss",
        ] {
            assert!(NAME_SERVICE_SOCKETS.contains(&s), "{s}");
            assert!(!RUNTIME_SOCKETS.contains(&s), "{s}");
        }
        assert!(NAME_SERVICE_SOCKET_DIRS.contains(&"/run/systemd/resolve"));
        // Watched: a service that starts (or restarts) later is refused at once.
        let dirs = socket_dirs(&[]);
        for s in NAME_SERVICE_SOCKETS {
            let near = Path::new(s).ancestors().skip(1).find(|d| d.is_dir());
            assert!(near.is_none_or(|d| dirs.contains(&d.to_owned())), "{s}");
        }
    }

    /// Every socket in a tmux server's directory (`/tmp/tmux-<uid>/`) is a runtime's: it runs
    /// what a client types into a session.
    #[test]
    fn a_tmux_server_s_sockets_are_runtime_sockets() {
        let dir = PathBuf::from(format!(
            "/tmp/tmux-{}",
            50_000 + std::process::id() % 10_000
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("default");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(runtime_socket_paths().contains(&sock));
        assert!(
            resolve_runtime_sockets()
                .values()
                .any(|p| p.contains(&sock))
        );
        assert!(socket_dirs(&[]).contains(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listening_abstract_sockets_of_runtimes_and_x_displays_are_runtime_sockets() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1001 @/tmp/.X11-unix/X42\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1002 @/containerd-shim/k8s.io/abc/shim.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1003 @/containerd-shim/k8s.io/abc/client\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1004 @/other/listener\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1005 /run/some.sock\n";
        let names = runtime_abstract_names(text);
        assert!(
            names.contains("/tmp/.X11-unix/X0"),
            "a display not listening yet"
        );
        assert!(names.contains("/tmp/.X11-unix/X42"));
        assert!(names.contains("/containerd-shim/k8s.io/abc/shim.sock"));
        assert!(
            !names.contains("/containerd-shim/k8s.io/abc/client"),
            "not listening"
        );
        assert!(!names.contains("/other/listener"));
        assert_eq!(names.len(), X11_DISPLAYS as usize + 2);

        // A real listener, found in this host's /proc/net/unix.
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!(
            "/containerd-shim/governance-test-{}/shim.sock",
            std::process::id()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let id = (UNIX_ABSTRACT_DEV, unix_name_hash(name.as_bytes()));
        assert_eq!(
            resolve_runtime_sockets().get(&id),
            Some(&vec![PathBuf::from(format!("@{name}"))])
        );
    }
}
