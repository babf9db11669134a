use super::*;

#[test]
fn device_numbers_use_the_kernel_encoding() {
    assert_eq!(kernel_dev(libc::makedev(254, 1)), (254 << 20) | 1);
    assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
    assert_eq!(kernel_dev(libc::makedev(8, 0x12345)), (8 << 20) | 0x12345);
}

#[test]
fn the_loader_is_found_from_an_executables_program_header() {
    // This test binary is dynamically linked: its interpreter is the loader.
    let elf = std::fs::read("/proc/self/exe").unwrap();
    let interp = elf_interpreter(&elf).expect("a PT_INTERP");
    assert!(interp.to_string_lossy().contains("ld-"), "{interp:?}");
    assert!(
        loader_identities().contains(&exec_identity(&interp).unwrap()),
        "{interp:?}"
    );
    assert_eq!(elf_interpreter(b"\x7fELF\x02\x01 not much else"), None);
    assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
}

#[test]
fn devices_refused_to_agents_are_read_from_proc_devices() {
    let devices = "Character devices:\n  1 mem\n 21 sg\n240 macvtap\n241 hidraw\n246 nvme-generic\n\
                   247 nvme\n249 bsg\n250 tpmrm\n252 wwan_port\n\nBlock devices:\n  8 sd\n240 macvtap-not-char\n259 blkext\n";
    let proc_misc = " 58 rdma_cm\n196 vfio\n200 tun\n120 ublk-control\n124 userfaultfd\n 62 not-listed\n\
                     121 nvme-fabrics\nbad line\n";
    // Serial drivers by type (round 30): a SoC UART (204), rfcomm (216), a gadget's (dynamic,
    // 236); the consoles, ptys and system terminals are not serial lines.
    let tty_drivers = "/dev/tty             /dev/tty        5       0 system:/dev/tty\n\
                       /dev/console         /dev/console    5       1 system:console\n\
                       /dev/ptmx            /dev/ptmx       5       2 system\n\
                       rfcomm               /dev/rfcomm   216 0-255 serial\n\
                       ttyAMA               /dev/ttyAMA   204 64-77 serial\n\
                       g_serial             /dev/ttyGS    236 0-3 serial\n\
                       pty_slave            /dev/pts      136 0-1048575 pty:slave\n\
                       pty_master           /dev/ptm      128 0-1048575 pty:master\n\
                       unknown              /dev/tty        4 1-63 console\n";
    let misc = |minor: u32| 10 << 20 | minor;
    let fixed = [
        4, 7, 13, 21, 89, 108, 166, 180, 188, 189, 202, 203, 229, 231,
    ];
    let memory = |minor: u32| 1 << 20 | minor;
    let misc_devices = [
        memory(1),
        memory(2),
        memory(4),
        5 << 20 | 1,
        5 << 20 | 3,
        misc(58),
        misc(120),
        misc(124),
        misc(130),
        misc(196),
        misc(200),
        misc(203),
        misc(223),
        misc(224),
        misc(237),
        misc(239),
        misc(241),
    ];
    let loaded = [240, 241, 246, 247, 249, 250, 252];
    let mut expected = [&fixed[..], &loaded, &misc_devices, &[204, 216, 236]].concat();
    expected.push(misc(121));
    expected.sort_unstable();
    assert_eq!(raw_device_majors(devices, proc_misc, tty_drivers), expected);
    // Without /proc/misc's dynamic minors (rdma_cm's 58 here; vfio's 196; ublk-control's 120;
    // userfaultfd's 124).
    let fixed_only: Vec<u32> = misc_devices
        .iter()
        .copied()
        .filter(|&d| ![misc(58), misc(120), misc(124), misc(196), misc(121)].contains(&d))
        .collect();
    assert_eq!(
        raw_device_majors("", "", ""),
        [&fixed[..], &fixed_only].concat()
    );
}

#[test]
fn the_embedded_object_has_every_program_and_map() {
    let obj = aya_obj_names();
    for name in programs::ALL
        .iter()
        .chain([&programs::EXEC_KILL, &programs::DISCOVER])
        .map(|p| p.name)
    {
        assert!(
            obj.contains(&name.to_string()),
            "program {name} missing: {obj:?}"
        );
    }
    for name in maps::ALL {
        assert!(
            obj.contains(&name.to_string()),
            "map {name} missing: {obj:?}"
        );
    }
}

const ALL_CAPS: Caps = Caps {
    bpf: true,
    perfmon: true,
    sys_admin: true,
};

fn eperm() -> TestLoad {
    TestLoad::Refused {
        errno: libc::EPERM,
        log: String::new(),
    }
}

/// This very host: `bpf` listed, integrity lockdown, root with every capability, LSM and
/// fentry loads refused with EPERM before the verifier, a socket filter loads.
fn refusing_host() -> LsmFacts {
    LsmFacts {
        lsm_list: Some("lockdown,capability,landlock,bpf".into()),
        lockdown: Some("none [integrity] confidentiality".into()),
        caps: Some(ALL_CAPS),
        lsm: eperm(),
        tracing: eperm(),
        control: TestLoad::Loaded,
    }
}

#[test]
fn a_host_that_refuses_bpf_lsm_is_not_told_to_boot_with_lsm_bpf() {
    let why = diagnose(&refusing_host()).unwrap();
    assert!(
        why.starts_with(
            "BPF LSM is active but this kernel refuses LSM program loads (EPERM, empty \
             verifier log) although the process has CAP_BPF and CAP_SYS_ADMIN and lockdown \
             is integrity: a host policy refuses BPF LSM and tracing programs"
        ),
        "{why}"
    );
    assert!(why.contains("while other program types load"), "{why}");
    assert!(
        why.ends_with(
            "the boot parameter cannot fix this. Run on a node that permits BPF LSM, or \
             accept degraded mode with --allow-degraded."
        ),
        "{why}"
    );
    assert!(!why.contains("lsm="), "{why}");

    // Only LSM programs refused: still the host, and tracing is said to load.
    let only_lsm = LsmFacts {
        tracing: TestLoad::Loaded,
        ..refusing_host()
    };
    let why = diagnose(&only_lsm).unwrap();
    assert!(why.contains("a host policy refuses BPF LSM programs (tracing: loaded"));
    assert!(!why.contains("lsm="), "{why}");
}

#[test]
fn the_boot_parameter_is_advised_only_when_bpf_is_not_listed() {
    let facts = LsmFacts {
        lsm_list: Some("lockdown,capability,landlock,yama".into()),
        lsm: TestLoad::Refused {
            errno: libc::EINVAL,
            log: String::new(),
        },
        ..refusing_host()
    };
    let why = diagnose(&facts).unwrap();
    assert!(
        why.contains("`bpf` is missing from the active LSMs")
            && why.contains("`lsm=lockdown,capability,landlock,yama,bpf`"),
        "{why}"
    );
    // bpf listed: never.
    for facts in [
        refusing_host(),
        LsmFacts {
            caps: Some(Caps {
                bpf: false,
                ..ALL_CAPS
            }),
            ..refusing_host()
        },
        LsmFacts {
            lockdown: Some("none integrity [confidentiality]".into()),
            ..refusing_host()
        },
        LsmFacts {
            control: eperm(),
            ..refusing_host()
        },
        LsmFacts {
            lockdown: None,
            caps: None,
            ..refusing_host()
        },
    ] {
        let why = diagnose(&facts).unwrap();
        assert!(!why.contains("lsm="), "{why}");
    }
}

#[test]
fn each_cause_of_a_refused_lsm_load_is_named() {
    let no_caps = LsmFacts {
        caps: Some(Caps {
            bpf: false,
            perfmon: true,
            sys_admin: false,
        }),
        ..refusing_host()
    };
    let why = diagnose(&no_caps).unwrap();
    assert!(why.contains("lacks CAP_BPF and CAP_SYS_ADMIN"), "{why}");

    let confidential = LsmFacts {
        lockdown: Some("none integrity [confidentiality]".into()),
        ..refusing_host()
    };
    let why = diagnose(&confidential).unwrap();
    assert!(why.contains("lockdown is `confidentiality`"), "{why}");

    let no_bpf_at_all = LsmFacts {
        control: eperm(),
        ..refusing_host()
    };
    let why = diagnose(&no_bpf_at_all).unwrap();
    assert!(why.contains("refuses every BPF program load"), "{why}");

    let unknown = LsmFacts {
        lockdown: None,
        caps: None,
        ..refusing_host()
    };
    let why = diagnose(&unknown).unwrap();
    assert!(
        why.contains("capabilities are unknown") && why.contains("lockdown is unknown"),
        "{why}"
    );

    let verifier = LsmFacts {
        lsm: TestLoad::Refused {
            errno: libc::EINVAL,
            log: "\nunknown func bpf_lsm_file_open\n".into(),
        },
        ..refusing_host()
    };
    let why = diagnose(&verifier).unwrap();
    assert!(
        why.contains("rejects a minimal LSM program")
            && why.contains("verifier log: unknown func bpf_lsm_file_open"),
        "{why}"
    );

    let unreadable = LsmFacts {
        lsm_list: None,
        ..refusing_host()
    };
    let why = diagnose(&unreadable).unwrap();
    assert!(
        why.contains("/sys/kernel/security/lsm is unreadable"),
        "{why}"
    );
}

#[test]
fn nothing_to_diagnose_when_lsm_programs_load() {
    let fine = LsmFacts {
        lsm: TestLoad::Loaded,
        tracing: TestLoad::Loaded,
        ..refusing_host()
    };
    assert_eq!(diagnose(&fine), None);
}

#[test]
fn capabilities_and_lockdown_are_read() {
    let status = "Name:\tgovernance\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
                  CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
    assert_eq!(Caps::from_status(status), Some(ALL_CAPS));
    let bare = Caps::from_status("CapEff:\t0000000000200000\n").unwrap();
    assert_eq!(bare.missing(), ["CAP_BPF", "CAP_PERFMON"]);
    assert_eq!(Caps::from_status("CapEff: zz\n"), None);
    assert_eq!(Caps::from_status(""), None);
    assert_eq!(
        lockdown_mode("none [integrity] confidentiality"),
        Some("integrity")
    );
    assert_eq!(
        lockdown_mode("[none] integrity confidentiality"),
        Some("none")
    );
    assert_eq!(lockdown_mode("garbage"), None);
}

/// The test loads run on this host without panicking, whatever it allows.
#[test]
fn test_loads_report_an_outcome() {
    let t = test_load(BPF_PROG_TYPE_SOCKET_FILTER, 0, 0);
    assert!(
        matches!(t, TestLoad::Loaded | TestLoad::Refused { .. }),
        "{t:?}"
    );
}

/// Symbol names in the embedded ELF object, read without loading anything.
fn aya_obj_names() -> Vec<String> {
    // The ELF string table holds every symbol name; a substring scan is enough here.
    EBPF_OBJECT
        .split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .map(str::to_owned)
        .collect()
}
