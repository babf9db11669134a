//! What the programs need to know of this host's files: its dynamic loaders, the majors of raw
//! storage drivers, and (device, inode) in the kernel's encoding.

use super::*;

/// Where dynamic loaders usually live (glibc and musl, x86_64 and arm64), besides the one this
/// daemon's own binary names.
pub(super) const LOADER_PATHS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib64/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
    "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
    // Multiarch: 32-bit and x32 (red team round 29).
    "/lib/ld-linux.so.2",
    "/lib32/ld-linux.so.2",
    "/usr/lib32/ld-linux.so.2",
    "/lib/i386-linux-gnu/ld-linux.so.2",
    "/usr/lib/i386-linux-gnu/ld-linux.so.2",
    "/libx32/ld-linux-x32.so.2",
    "/usr/libx32/ld-linux-x32.so.2",
    "/lib/ld-musl-i386.so.1",
];

/// The interpreter (PT_INTERP) a 64-bit little-endian ELF executable names, if any.
pub fn elf_interpreter(elf: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at =
        |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?) as usize);
    // ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, usize::from(u16_at(0x36)?), u16_at(0x38)?);
    (0..usize::from(phnum)).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        const PT_INTERP: u32 = 3;
        if u32_at(ph)? != PT_INTERP {
            return None;
        }
        let (offset, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
        let raw = elf.get(offset..offset.checked_add(size)?)?;
        let name = raw.split(|&b| b == 0).next()?;
        (!name.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(name)))
    })
}

/// The identities of this node's dynamic loaders, which agents may not run as programs: the
/// interpreter of the daemon's own binary, and the usual paths (symlinks followed). A loader
/// elsewhere (a Nix store, a conda environment) is not known; exec rules decide on it.
pub fn loader_identities() -> Vec<(u32, u64)> {
    // The program headers and the interpreter's name sit at the start of the file; read once
    // (this is asked every second); a read that failed (no descriptor left) is tried again.
    static OWN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let own = OWN.get().cloned().or_else(|| {
        let found = crate::procfs::open("/proc/self/exe").ok().and_then(|f| {
            let mut head = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 << 10), &mut head).ok()?;
            elf_interpreter(&head)
        })?;
        Some(OWN.get_or_init(|| found).clone())
    });
    let mut ids: Vec<(u32, u64)> = own
        .into_iter()
        .chain(LOADER_PATHS.iter().map(PathBuf::from))
        .filter_map(|p| exec_identity(&p).ok())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Character-device drivers that pass commands to a disk (raw reads with no file rule on the
/// way): SCSI generic, block SCSI generic, NVMe generic, NVMe controllers (`/dev/nvme0`: since
/// Linux 6.2 a descriptor open for writing sends read and write commands to the controller's
/// namespace with no capability; red team round 20), MTD (raw flash).
pub(super) const RAW_CHAR_DRIVERS: &[&str] = &["sg", "bsg", "nvme-generic", "nvme", "mtd"];
/// Character-device drivers that reach past the rules otherwise, by their name in
/// /proc/devices (their majors are given out at load): frames written onto a network with no
/// socket (macvtap, ipvtap), raw HID reports (hidraw: a keyboard's keys read), device
/// registers mapped (uio), USB traffic read (usbmon) and USB devices driven from user space
/// (usb_device: a USB network adapter's frames, a keyboard's keys), the I2C buses and the
/// BMC (i2c, ipmidev: the node's firmware, power and console), watchdogs (an open left
/// unclosed reboots the node).
/// Also RDMA's verbs and management devices (`/dev/infiniband/uverbs*`, `umad*`: queue pairs
/// the NIC itself sends from, to any address, with no socket; raw Ethernet frames with
/// CAP_NET_RAW), a device driven from user space (vfio groups, vhost-vdpa) and raw persistent
/// memory (device-dax) (red team round 8). And (red team round 30) the TPM's devices (`tpm`,
/// `tpmrm`: the node's attestation keys used, sealed secrets unsealed, PCRs extended, the
/// TPM cleared), modems' control ports (`wwan_port`: `AT+CMGS` sends a text message) and
/// virtio's serial ports (`virtio-portsdev`: a channel to the hypervisor host).
pub(super) const BYPASS_CHAR_DRIVERS: &[&str] = &[
    "tpm",
    "tpmrm",
    "wwan_port",
    "virtio-portsdev",
    "infiniband_verbs",
    "infiniband_mad",
    "vfio",
    "vhost-vdpa",
    "dax",
    "macvtap",
    "ipvtap",
    "hidraw",
    "uio",
    "usbmon",
    "usb_device",
    "i2c",
    "ipmidev",
    "watchdog",
];
/// Fixed character majors of the same kind: the virtual consoles and serial lines (4: `tty1`,
/// `ttyS0`, where an administrator logs in at the node's console; typed lines raced for, as on
/// another session's pty), the consoles' screens (vcs, vcsa: read and write
/// another terminal's contents), input devices (every key typed on the node, and events
/// written into it), I2C (89), PPP (frames onto a PPP unit, no socket), USB devices (189),
/// the processors' model-specific registers and CPUID (202, 203: an MSR write runs kernel code),
/// USB modems (ttyACM 166, ttyUSB 188: a mobile network no hook sees), RDMA (231), USB's
/// class devices (180: a modem's `cdc-wdm` control, which sends text messages and opens data
/// sessions; printers) and the hypervisor consoles (hvc, 229: the host's console log, a
/// console an administrator logs in on; round 30). Every serial line's driver besides
/// (SoC UARTs, Bluetooth's rfcomm, USB gadget serial: [`serial_majors`]).
pub(super) const BYPASS_CHAR_MAJORS: &[u32] =
    &[4, 7, 13, 89, 108, 166, 180, 188, 189, 202, 203, 229, 231];
/// Misc devices with a minor given out at load, by their name in /proc/misc: RDMA's connection
/// manager (`/dev/infiniband/rdma_cm`, mode 0666: connections to any address the NIC makes,
/// no socket), VFIO's container (`/dev/vfio/vfio`) and ublk's control device
/// (`/dev/ublk-control`: with `UBLK_F_UNPRIVILEGED_DEV`, a block device served by the agent,
/// which udev and blkid probe and parse as root; the block twin of CUSE, red team round 27),
/// and `/dev/userfaultfd` (6.1+: a userfaultfd that handles the kernel's own faults on the
/// agent's memory without CAP_SYS_PTRACE, which holds a kernel path mid-copy for as long as
/// the agent likes: a race widener; red team round 29).
/// Also NVMe over Fabrics' control device (`/dev/nvme-fabrics`: a write makes the kernel
/// connect to any address, over RDMA with no socket, and attach the namespaces it serves as
/// block devices that udev probes as root; round 30).
pub(super) const BYPASS_MISC_DRIVERS: &[&str] = &[
    "rdma_cm",
    "vfio",
    "ublk-control",
    "userfaultfd",
    "nvme-fabrics",
];
/// Single devices, in the kernel's `dev_t` (`MAJOR << 20 | MINOR`): physical memory, kernel
/// memory and I/O ports (`/dev/mem`, `/dev/kmem`, `/dev/port`: every secret on the node read,
/// PCI configuration and a reset written; their opens also check CAP_SYS_RAWIO, which agents
/// never get, but the device is refused whatever credentials the check is given); the system
/// console (`/dev/console`, 5:1: the kernel's console, a terminal of the node's); and misc
/// devices (major 10): the tun
/// device (`TUNSETIFF` attaches to an existing tun or tap, whose frames no network hook sees:
/// making one needs CAP_NET_ADMIN, so attaching is all an agent would open it for), uinput and
/// uhid (a keyboard made up, typing into a shell outside the agent), vhost-vsock (a guest's
/// vsock to the host's services), the legacy watchdog, CUSE (`/dev/cuse`: a character device
/// of any name served by the agent, which root services then open; red team round 21); and
/// (red team round 26) `/dev/ttyprintk` (5:3: lines into the kernel's log and onto the node's
/// consoles, as `/dev/kmsg`) and `/dev/loop-control` (10:237: loop devices added and removed
/// with no capability check, each a device event that udevd, outside the agent, acts on, and
/// other services' free loop devices removed).
pub(super) const BYPASS_DEVICES: &[u32] = &[
    1 << 20 | 1,
    1 << 20 | 2,
    1 << 20 | 4,
    5 << 20 | 1,
    5 << 20 | 3,
    10 << 20 | 237,
    10 << 20 | 130,
    10 << 20 | 200,
    10 << 20 | 203,
    10 << 20 | 223,
    // The first TPM's `/dev/tpm0` (misc's minor, though not a misc device; round 30).
    10 << 20 | 224,
    10 << 20 | 239,
    10 << 20 | 241,
];
/// SCSI generic's fixed major, refused even before its module is loaded.
pub(super) const SCSI_GENERIC_MAJOR: u32 = 21;

/// The character devices agents may not open, as RAW_DEVICES keys: the majors of
/// [`RAW_CHAR_DRIVERS`] and [`BYPASS_CHAR_DRIVERS`] in /proc/devices' "Character devices"
/// section (the drivers loaded now: a later module load is picked up by the next reload), the
/// fixed majors, [`BYPASS_DEVICES`] and the [`BYPASS_MISC_DRIVERS`] in `/proc/misc` (whole
/// `dev_t`s, which no major, below 4096, equals), and the majors of every serial driver in
/// `/proc/tty/drivers` ([`serial_majors`]).
pub fn raw_device_majors(proc_devices: &str, proc_misc: &str, tty_drivers: &str) -> Vec<u32> {
    let mut majors = vec![SCSI_GENERIC_MAJOR];
    majors.extend(serial_majors(tty_drivers));
    majors.extend(BYPASS_CHAR_MAJORS);
    majors.extend(BYPASS_DEVICES);
    // /proc/misc: "MINOR NAME" lines; misc is major 10.
    majors.extend(proc_misc.lines().filter_map(|line| {
        let (minor, name) = line.trim().split_once(char::is_whitespace)?;
        let minor: u32 = minor.parse().ok()?;
        (BYPASS_MISC_DRIVERS.contains(&name.trim()) && minor < 1 << 20).then_some(10 << 20 | minor)
    }));
    let mut in_char = false;
    for line in proc_devices.lines() {
        let line = line.trim();
        if line.ends_with(':') {
            in_char = line == "Character devices:";
            continue;
        }
        if let (true, Some((major, name))) = (in_char, line.split_once(char::is_whitespace))
            && (RAW_CHAR_DRIVERS.contains(&name.trim())
                || BYPASS_CHAR_DRIVERS.contains(&name.trim()))
            && let Ok(major) = major.parse::<u32>()
        {
            majors.push(major);
        }
    }
    majors.sort_unstable();
    majors.dedup();
    majors
}

/// The majors of the serial lines' drivers, from `/proc/tty/drivers` ("name /dev/prefix major
/// minors type" lines; type `serial`): UARTs wired to modems and radios, Bluetooth's rfcomm,
/// USB gadget serial, USB serial adapters, whatever driver a board has (red team round 30).
/// Consoles, ptys and the system's terminals have other types.
pub fn serial_majors(tty_drivers: &str) -> Vec<u32> {
    tty_drivers
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, _, major, _, "serial", ..] => major.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// The identity the kernel will see for an executable: the superblock device in the kernel's
/// internal `dev_t` encoding (`MAJOR << 20 | MINOR`) and the inode number. `stat` follows
/// symlinks, so a rule naming a symlink blocks the file it points to.
pub fn exec_identity(path: &Path) -> std::io::Result<(u32, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((super::kernel_dev_at(path, meta.dev(), true), meta.ino()))
}

/// Userspace `st_dev` → kernel `dev_t` (`include/linux/kdev_t.h`).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xf_ffff)
}
