//! Reading network interfaces from the kernel of the caller's network namespace, in-process:
//! `if_nametoindex` and `SIOCGIF*` ioctls answer for the namespace of the calling thread
//! (unlike `/sys/class/net`, which shows the namespace sysfs was mounted in).

use std::ffi::CString;

/// What the kernel says of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    pub mtu: u32,
}

/// The interface's index, or None when no interface of that name exists here.
pub fn index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

pub fn exists(name: &str) -> bool {
    index(name).is_some()
}

/// Index, administrative up flag and MTU of `name`, or None when it does not exist.
pub fn link_state(name: &str) -> Option<LinkState> {
    let index = index(name)?;
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain datagram socket used only for interface ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Some(LinkState {
            index,
            up: false,
            mtu: 0,
        });
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a socket, req a valid ifreq carrying a NUL-terminated name.
    let flags = if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) } == 0 {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags as i32 }
    } else {
        0
    };
    // SAFETY: as above; SIOCGIFMTU fills the mtu member.
    let mtu = if unsafe { libc::ioctl(fd, libc::SIOCGIFMTU as _, &mut req) } == 0 {
        unsafe { req.ifr_ifru.ifru_mtu as u32 }
    } else {
        0
    };
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::close(fd) };
    Some(LinkState {
        index,
        up: flags & libc::IFF_UP != 0,
        mtu,
    })
}

/// The kernel driver behind `name` (ethtool's `GDRVINFO`): `wireguard` for the kernel
/// module, `tun` for a TUN device such as wireguard-go's, `veth`, ...
pub fn driver(name: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid DrvInfo and ifreq.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a socket for the ioctl, closed below; req points at a live DrvInfo.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// True when `name` is a WireGuard interface: the kernel's, or a TUN device served by a
/// userspace implementation (its control socket exists). Only these are ever replaced or
/// deleted by name.
pub fn is_wireguard(name: &str) -> bool {
    match driver(name).as_deref() {
        Some("wireguard") => true,
        Some("tun") => userspace_socket(name),
        _ => false,
    }
}

/// wireguard-go's (and other UAPI implementations') control socket for `name`, served from
/// *this* network namespace: a socket in `/run/wireguard` (a directory only root and we can
/// change) owned by root or us, and listening in this namespace. `/run/wireguard` is shared by
/// every namespace, so a socket of that name served elsewhere says nothing about the
/// interface here; `/proc/thread-self/net/unix` lists only this namespace's sockets. (Not
/// `SO_PEERCRED`: it names the process that called `listen`, and wireguard-go listens before
/// it re-executes itself as a daemon, so that pid is gone.)
pub fn userspace_socket(name: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok((dir, _)) = crate::trust::open_dir_chain(std::path::Path::new("/run/wireguard")) else {
        return false;
    };
    drop(dir);
    let path = format!("/run/wireguard/{name}.sock");
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() && (m.uid() == 0 || m.uid() == crate::trust::euid()) => {
        }
        _ => return false,
    }
    let table = std::fs::read_to_string("/proc/thread-self/net/unix")
        .or_else(|_| std::fs::read_to_string("/proc/self/net/unix"))
        .unwrap_or_default();
    listening_here(&table, name)
}

/// Does `/proc/net/unix` text list a listening socket bound at wireguard-go's path for `name`?
fn listening_here(table: &str, name: &str) -> bool {
    let paths = [
        format!("/var/run/wireguard/{name}.sock"),
        format!("/run/wireguard/{name}.sock"),
    ];
    // Num RefCount Protocol Flags Type St Inode Path; a listening socket has Flags 00010000.
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[3] == "00010000" && paths.iter().any(|p| f[7] == p)
    })
}

/// False when IPv6 is disabled (or absent) in this network namespace; then a tunnel must
/// leave `::/0` out or the route install fails.
pub fn ipv6_enabled() -> bool {
    match std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6") {
        Ok(s) => s.trim() == "0",
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wireguard_go_socket_counts_only_when_listening_in_this_namespace() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                     0000000000000000: 00000002 00000000 00010000 0001 01 26411 /var/run/wireguard/wg0.sock\n\
                     0000000000000000: 00000003 00000000 00000000 0001 03 26412 /var/run/wireguard/wg1.sock\n";
        assert!(listening_here(table, "wg0"));
        assert!(
            !listening_here(table, "wg1"),
            "a connected socket, not the listener"
        );
        assert!(!listening_here(table, "wg2"));
        assert!(!listening_here(table, "wg"));
    }

    #[test]
    fn loopback_is_seen_and_a_missing_name_is_not() {
        let lo = link_state("lo").expect("lo exists");
        assert!(lo.up);
        assert!(lo.mtu > 0);
        assert!(!exists("bw-no-such0"));
        assert!(!is_wireguard("lo"));
        assert_eq!(driver("bw-no-such0"), None);
        assert!(link_state("bw-no-such0").is_none());
    }
}
