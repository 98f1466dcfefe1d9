//! Steering every TCP connection to 127.0.0.1, whatever its port, to one listening socket
//! of ours, with a BPF `sk_lookup` program attached to the pod's network namespace.
//!
//! Why: containerd serves CRI `PortForward` by dialing `localhost:<port>` inside the pod's
//! network namespace on the host. With runc the pod's process listens there; with a VM
//! nothing does (the guest is the pod), so the dial is refused (Kata #10843). The program
//! hands such connections to the shim's listener, which still sees the port that was
//! dialed as the accepted socket's local address and forwards it into the guest.
//!
//! The program is 23 instructions, written out here rather than compiled: no BPF toolchain
//! is needed to build the shim, and the loader is the `bpf(2)` calls below.
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum SkLookupError {
    #[error("bpf({command}): {cause}")]
    Bpf {
        command: &'static str,
        cause: std::io::Error,
    },
    #[error("the kernel refused the loopback steering program: {cause}; verifier: {log}")]
    Load { cause: std::io::Error, log: String },
}

// From <linux/bpf.h>.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_SK_RELEASE: i32 = 86;
const BPF_FUNC_SK_ASSIGN: i32 = 124;
const SK_PASS: i32 = 1;
/// Offsets in `struct bpf_sk_lookup`.
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;

// The parts of `union bpf_attr` each command reads; the kernel zero-fills the rest.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}
// Opcodes, as <linux/bpf_common.h> composes them.
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM
const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JEQ_IMM: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// 127.0.0.1 as the program reads `local_ip4` (network order, loaded as a native u32).
const LOOPBACK_IP4: i32 = i32::from_ne_bytes([127, 0, 0, 1]);

/// The program: if the packet is TCP over IPv4 to 127.0.0.1, assign it to the socket in
/// slot 0 of the sockmap `map_fd`; pass in every case (unassigned: the normal lookup).
fn program(map_fd: i32) -> Vec<Insn> {
    const OUT: i16 = 21;
    // A jump at instruction `at` to OUT: offsets count from the next instruction.
    let to_out = |at: i16| OUT - at - 1;
    vec![
        /* 0 */ insn(MOV64_REG, 6, 1, 0, 0), // r6 = ctx
        /* 1 */ insn(LDX_W, 2, 6, CTX_FAMILY, 0),
        /* 2 */ insn(JNE_IMM, 2, 0, to_out(2), libc::AF_INET),
        /* 3 */ insn(LDX_W, 2, 6, CTX_PROTOCOL, 0),
        /* 4 */ insn(JNE_IMM, 2, 0, to_out(4), libc::IPPROTO_TCP),
        /* 5 */ insn(LDX_W, 2, 6, CTX_LOCAL_IP4, 0),
        /* 6 */ insn(JNE_IMM, 2, 0, to_out(6), LOOPBACK_IP4),
        /* 7 */ insn(ST_W, 10, 0, -4, 0), // key = 0, on the stack
        /* 8 */ insn(LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // r1 = &map
        /* 9 */ insn(0, 0, 0, 0, 0),
        /* 10 */ insn(MOV64_REG, 2, 10, 0, 0),
        /* 11 */ insn(ADD64_IMM, 2, 0, 0, -4), // r2 = &key
        /* 12 */
        insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM), // r0 = our socket, referenced
        /* 13 */ insn(JEQ_IMM, 0, 0, to_out(13), 0),
        /* 14 */ insn(MOV64_REG, 7, 0, 0, 0), // r7 = sk, kept across calls
        /* 15 */ insn(MOV64_REG, 1, 6, 0, 0),
        /* 16 */ insn(MOV64_REG, 2, 7, 0, 0),
        /* 17 */ insn(MOV64_IMM, 3, 0, 0, 0),
        /* 18 */
        insn(CALL, 0, 0, 0, BPF_FUNC_SK_ASSIGN), // its result: either way, pass
        /* 19 */ insn(MOV64_REG, 1, 7, 0, 0),
        /* 20 */ insn(CALL, 0, 0, 0, BPF_FUNC_SK_RELEASE),
        /* 21 = OUT */ insn(MOV64_IMM, 0, 0, 0, SK_PASS),
        /* 22 */ insn(EXIT, 0, 0, 0, 0),
    ]
}

/// bpf(2) with `attr`, a prefix of `union bpf_attr` for `cmd`: its return value.
fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised prefix of `union bpf_attr` for `cmd`, of the
    // size given; the kernel only reads it (and the buffers it points to).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, std::mem::size_of::<T>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// The fd that MAP_CREATE, PROG_LOAD or LINK_CREATE returns.
fn new_fd<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: these commands return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Names the bpf(2) command that failed.
fn failed(command: &'static str) -> impl FnOnce(std::io::Error) -> SkLookupError {
    move |cause| SkLookupError::Bpf { command, cause }
}

/// The program attached to one network namespace; detached when dropped.
#[derive(Debug)]
pub struct LoopbackSteering {
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
}

impl LoopbackSteering {
    /// Attaches to the network namespace `netns` (an open nsfs file) a program that hands
    /// TCP connections to 127.0.0.1 to `listener`, a listening socket in that namespace.
    pub fn attach(netns: BorrowedFd<'_>, listener: BorrowedFd<'_>) -> Result<Self, SkLookupError> {
        let map = new_fd(
            BPF_MAP_CREATE,
            &MapCreateAttr {
                map_type: BPF_MAP_TYPE_SOCKMAP,
                key_size: 4,
                value_size: 8,
                max_entries: 1,
            },
        )
        .map_err(failed("MAP_CREATE"))?;
        let key = 0u32;
        let value = listener.as_raw_fd() as u64;
        sys_bpf(
            BPF_MAP_UPDATE_ELEM,
            &MapUpdateAttr {
                map_fd: map.as_raw_fd() as u32,
                _pad: 0,
                key: &key as *const u32 as u64,
                value: &value as *const u64 as u64,
                flags: 0,
            },
        )
        .map_err(failed("MAP_UPDATE_ELEM (the listener into the sockmap)"))?;
        let prog = load(map.as_raw_fd())?;
        let link = new_fd(
            BPF_LINK_CREATE,
            &LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_fd: netns.as_raw_fd() as u32,
                attach_type: BPF_SK_LOOKUP,
                flags: 0,
            },
        )
        .map_err(failed(
            "LINK_CREATE (sk_lookup on the pod's network namespace)",
        ))?;
        Ok(LoopbackSteering {
            _link: link,
            _prog: prog,
            _map: map,
        })
    }
}

/// Loads the program. Without the verifier's log, which costs a buffer and the verifier's
/// printing on every pod start; only a refused load is retried with it, for the error.
fn load(map_fd: i32) -> Result<OwnedFd, SkLookupError> {
    let insns = program(map_fd);
    const LICENSE: &CStr = c"Apache-2.0";
    let mut name = [0u8; 16];
    let short = b"hyper_pfwd_lo";
    name[..short.len()].copy_from_slice(short);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SK_LOOKUP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_SK_LOOKUP,
    };
    let cause = match new_fd(BPF_PROG_LOAD, &attr) {
        Ok(prog) => return Ok(prog),
        Err(cause) => cause,
    };
    let mut log = vec![0u8; 16 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let cause = match new_fd(BPF_PROG_LOAD, &attr) {
        // Loaded the second time: take it, but say the first load failed.
        Ok(prog) => {
            tracing::warn!("the loopback steering program loaded only at the second try: {cause}");
            return Ok(prog);
        }
        Err(cause) => cause,
    };
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    Err(SkLookupError::Load {
        cause,
        log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_on_the_pass_and_exit() {
        let p = program(7);
        assert_eq!(p.len(), 23);
        assert_eq!(p[21], insn(MOV64_IMM, 0, 0, 0, SK_PASS));
        assert_eq!(p[22].code, EXIT);
        for (at, i) in p.iter().enumerate() {
            if i.code == JNE_IMM || i.code == JEQ_IMM {
                assert_eq!(at as i16 + 1 + i.off, 21, "jump at {at}");
            }
        }
        assert_eq!(LOOPBACK_IP4.to_ne_bytes(), [127, 0, 0, 1]);
    }

    #[test]
    fn a_refused_load_carries_the_verifiers_reason() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (CAP_BPF)");
            return;
        }
        // No map behind fd -1: the verifier refuses the program and says so in its log.
        match load(-1) {
            Err(SkLookupError::Load { log, .. }) => assert!(!log.is_empty(), "no verifier log"),
            other => panic!("a program without its map was not refused: {other:?}"),
        }
    }
}
